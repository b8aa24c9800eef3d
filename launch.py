"""fourdfy command line (4D-fy's surface).

    python launch.py --config configs/fourdfy_stage_1.yaml --train --gpu 0 system.prompt_processor.prompt="a panda dancing"
    python launch.py --config configs/fourdfy_stage_2.yaml --train --gpu 0 system.prompt_processor.prompt="a panda dancing" \
        system.weights=outputs/fourdfy_stage_1/a_panda_dancing@.../ckpts/last.ckpt
    python launch.py --config outputs/.../configs/parsed.yaml --test --gpu 0 resume=outputs/.../ckpts/last.ckpt
    python launch.py --pipeline configs/fourdfy.yaml --train system.prompt_processor.prompt="a panda dancing"

Any number of ``key=value`` overrides follow the flags (OmegaConf dotlist; bracket keys such as
``'system.optimizer.params[geometry.encoding].lr=0.01'`` work). ``resume=<ckpt>`` continues a run;
``system.weights=<ckpt>`` starts a new stage from an old one.
"""

import argparse
import os
import sys


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="fourdfy: text-to-4D generation (4D-fy re-implementation)")
    parser.add_argument("--config", action="append", default=[], help="config file; repeat to merge several in order")
    parser.add_argument("--pipeline", default=None, help="a pipeline file listing stage configs to run in order")
    parser.add_argument("--gpu", default="0", help="GPU index(es), e.g. 0 or 0,1 (data parallel)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true")
    mode.add_argument("--validate", action="store_true")
    mode.add_argument("--test", action="store_true")
    mode.add_argument("--export", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--typecheck", action="store_true", help="check jaxtyping annotations at run time")
    args, extras = parser.parse_known_args(argv)
    if bool(args.config) == bool(args.pipeline):
        parser.error("give either --config (one or more) or --pipeline")
    return args, extras


def main(argv: list[str] | None = None) -> int:
    args, extras = parse_args(sys.argv[1:] if argv is None else argv)
    # device selection must happen before torch initialises CUDA
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    if args.typecheck:
        import jaxtyping

        jaxtyping.install_import_hook(["fourdfy", "extern"], "beartype.beartype")

    from fourdfy.run import run_experiment, run_pipeline

    if args.pipeline:
        return run_pipeline(args, extras)
    return run_experiment(args, extras)


if __name__ == "__main__":
    sys.exit(main())
