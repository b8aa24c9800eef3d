#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried wheels, print versions, run the benchmarks.
# Usage there:  bash benchmarks/gpu_session.sh   (writes JSON + a log under $OUT, or benchmarks/results/)
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
rm -f .whl/nerfacc-*.whl   # nerfacc would JIT-compile its CUDA extension on first use (minutes): keep it out
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
log="$OUT/gpu_session.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, transformers, pytorch_lightning, omegaconf, huggingface_hub as h; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', pytorch_lightning.__version__, 'omegaconf', omegaconf.__version__, 'hub', h.__version__)"
} 2>&1 | tee "$log"
run() { echo "=== $*" | tee -a "$log"; timeout "$1" "${@:2}" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode at the start" | tee -a "$log" | tail -15; }
run 200 python3 benchmarks/mvdream_unet.py --out "$OUT/mvdream_unet.json"
run 180 python3 benchmarks/train_step.py --stage 1 --phase early --steps 20 --warmup 5 --out "$OUT"
run 180 python3 benchmarks/train_step.py --stage 1 --phase late --steps 20 --warmup 5 --out "$OUT"
run 240 python3 benchmarks/train_step.py --stage 2 --steps 30 --warmup 6 --out "$OUT"
ls -la "$OUT"
