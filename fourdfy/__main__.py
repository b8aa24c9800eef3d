"""``python -m fourdfy ...``: the same command line as ``launch.py`` (see :mod:`fourdfy.cli`)."""

import sys

from fourdfy.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m fourdfy"))
