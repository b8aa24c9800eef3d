"""``python -m fourdfy.evaluate <trial dir>``: CLIP score, temporal consistency and motion of a trial.

Renders the trial's evaluation orbit and a fixed-camera motion probe from ``configs/parsed.yaml`` and
``ckpts/last.ckpt`` (no diffusion weights needed), writes ``save/eval.json`` and refreshes ``save/index.html``.
CLIP ViT-B/32 comes from ``--clip`` (hub id or local folder), else ``$FOURDFY_CLIP``, else the hub.
"""

import argparse
import json
import logging
import sys

from fourdfy.errors import USER_ERRORS


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    ap = argparse.ArgumentParser(prog="python -m fourdfy.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("trial_dir", help="outputs/{name}/{tag}@{time}")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ap.add_argument("--clip", default=None, help="CLIP model: hub id or local folder (default openai/clip-vit-base-patch32)")
    ap.add_argument("--num-frames", type=int, default=None, help="orbit views (default: the trial's n_test_views)")
    ap.add_argument("--height", type=int, default=None, help="render height (default: the trial's eval_height)")
    ap.add_argument("--width", type=int, default=None, help="render width (default: the trial's eval_width)")
    ap.add_argument("--motion-views", type=int, default=4, help="fixed cameras of the motion probe")
    ap.add_argument("--motion-times", type=int, default=16, help="times per fixed camera")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--no-page", action="store_true", help="do not rewrite save/index.html")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints the metrics as JSON."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    from fourdfy.evaluation.evaluate_trial import EvalSettings, evaluate_trial

    settings = EvalSettings(
        num_frames=args.num_frames, height=args.height, width=args.width,
        motion_views=args.motion_views, motion_times=args.motion_times,
    )  # fmt: skip
    try:
        result = evaluate_trial(args.trial_dir, args.clip, settings, tuple(args.overrides), device=args.device)
    except (*USER_ERRORS, FileNotFoundError) as e:
        print(f"fourdfy: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["metrics"], indent=2))
    if not args.no_page:
        from fourdfy.evaluation.page import write_result_page

        print(write_result_page(args.trial_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
