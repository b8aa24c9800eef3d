"""fourdfy command line (4D-fy's surface); the same as ``python -m fourdfy`` (see ``fourdfy/cli.py``).

    python launch.py --config configs/fourdfy_stage_1.yaml --train --gpu 0 system.prompt_processor.prompt="a panda dancing"
    python launch.py --pipeline configs/fourdfy.yaml --train system.prompt_processor.prompt="a panda dancing"
"""

import sys

from fourdfy.cli import main as _main
from fourdfy.cli import parse_args  # noqa: F401  (callers use launch.parse_args)


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="launch.py")


if __name__ == "__main__":
    sys.exit(main())
