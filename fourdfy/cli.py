"""The command line, shared by ``python launch.py`` and ``python -m fourdfy`` (4D-fy's flags).

    python -m fourdfy --config configs/fourdfy_stage_1.yaml --train --gpu 0 \\
        system.prompt_processor.prompt="a panda dancing"
    python -m fourdfy --config configs/fourdfy_stage_2.yaml --train --gpu 0 \\
        system.prompt_processor.prompt="a panda dancing" \\
        system.weights=outputs/fourdfy_stage_1/a_panda_dancing@.../ckpts/last.ckpt
    python -m fourdfy --config outputs/.../configs/parsed.yaml --test --gpu 0 resume=outputs/.../ckpts/last.ckpt
    python -m fourdfy --pipeline configs/fourdfy.yaml --train system.prompt_processor.prompt="a panda dancing"

Any number of ``key=value`` overrides follow the flags (OmegaConf dotlist; bracket keys such as
``'system.optimizer.params[geometry.encoding].lr=0.01'`` work). ``resume=<ckpt>`` continues a run;
``system.weights=<ckpt>`` starts a new stage from an old one. Errors end with ``fourdfy: error: ...`` and exit code
2; ``--verbose`` adds tracebacks and Lightning's own messages.
"""

import argparse
import os
import re
import sys
from typing import NoReturn, Optional

GPU_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"fourdfy: error: {message}\n")


def parse_args(argv: list[str], prog: Optional[str] = None) -> tuple[argparse.Namespace, list[str]]:
    parser = _Parser(prog=prog, description="fourdfy: text-to-4D generation (4D-fy re-implementation)")
    parser.add_argument("--config", action="append", default=[], help="config file; repeat to merge several in order")
    parser.add_argument("--pipeline", default=None, help="a pipeline file listing stage configs to run in order")
    parser.add_argument(
        "--gpu", default=None, help="GPU index(es), e.g. 0 or 0,1 (data parallel); default 0. Without CUDA: the CPU"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true")
    mode.add_argument("--validate", action="store_true")
    mode.add_argument("--test", action="store_true")
    mode.add_argument("--export", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="debug logging, tracebacks, Lightning's messages")
    parser.add_argument("--typecheck", action="store_true", help="check jaxtyping annotations at run time")
    args, extras = parser.parse_known_args(argv)
    if bool(args.config) == bool(args.pipeline):
        parser.error("give either --config (one or more) or --pipeline")
    if args.gpu is not None and not GPU_LIST.match(args.gpu):
        parser.error(f"--gpu {args.gpu!r}: expected GPU indices such as 0 or 0,1")
    return args, extras


CUDA_ALLOC_CONF_DEFAULT = "expandable_segments:True"
"""PyTorch's CUDA allocator setting unless ``PYTORCH_CUDA_ALLOC_CONF`` is already set. Training allocates tensors
of a new size every step (the packed samples of each render); with fixed segments the cached blocks fragment and
the allocator held 31.7 GiB for a 14.5 GiB peak in the paper stage 3, and under a 22 GiB cap (a 24 GB card) it ran
out of memory with 5.3 GiB reserved but unused. Expandable segments fit it in 20.5 GiB
(``benchmarks/results/iteration_stage_3_late_fast_cap22_expandable_nvidia-h200.json``)."""


def cuda_environment(gpu: Optional[str]) -> None:
    """Environment read when torch initialises CUDA, so set before: the visible GPUs (``--gpu``, default 0) in PCI
    order, and the allocator setting :data:`CUDA_ALLOC_CONF_DEFAULT` (a user's own ``PYTORCH_CUDA_ALLOC_CONF``
    wins)."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(g.strip() for g in (gpu or "0").split(",") if g.strip())
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF_DEFAULT)


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parse_args(argv, prog)
    cuda_environment(args.gpu)
    if args.typecheck:
        import jaxtyping

        jaxtyping.install_import_hook(["fourdfy", "extern"], "beartype.beartype")

    from fourdfy.run import run_experiment, run_pipeline

    if args.pipeline:
        return run_pipeline(args, extras)
    command = ["python", "-m", "fourdfy"] if prog == "python -m fourdfy" else ["python", prog or "launch.py"]
    return run_experiment(args, extras, argv=[*command, *argv])
