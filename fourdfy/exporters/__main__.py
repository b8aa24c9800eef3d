"""``python -m fourdfy.exporters <trial dir> [key=value ...]``: export a trial's mesh(es) and refresh its page."""

import argparse
import logging
import sys

from fourdfy.errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: export into ``save/it{S}-export/`` and rewrite ``save/index.html``."""
    ap = argparse.ArgumentParser(prog="python -m fourdfy.exporters", description=__doc__)
    ap.add_argument("trial_dir", help="outputs/{name}/{tag}@{time}")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. system.exporter.num_times=32")
    ap.add_argument("--no-page", action="store_true", help="do not rewrite save/index.html")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    from fourdfy.exporters.trial_export import export_trial

    try:
        paths = export_trial(args.trial_dir, tuple(args.overrides))
    except (*USER_ERRORS, FileNotFoundError) as e:
        print(f"fourdfy: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    if not args.no_page:
        from fourdfy.evaluation.page import write_result_page

        print(write_result_page(args.trial_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
