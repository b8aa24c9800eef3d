#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried wheels, print versions, run the named parts.
#   bash benchmarks/gpu_session.sh tests precision stage1 stage3 vc
# writes JSON + a log under $OUT (or benchmarks/results/). Parts:
#   tests      the whole test suite on the GPU machine (fast paths compared there)
#   precision  benchmarks/precision.py (every frozen network, every dtype)
#   stage1     stage 1 at 256^2, this tree and the pre-refactor tree carried in .bench_base/ (same call, same card)
#   stage1ref  stage 1 at 256^2 at the refactor commit carried in .bench_refactor/
#   stage2     stage 2 at 256^2
#   stage3     fourdfy_stage_3 and fourdfy_stage_3_low_vram (ZeroScope)
#   vc         the VideoCrafter2 UNet per call, fourdfy_stage_3_vc and fourdfy_stage_3_low_vram_vc
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
log="$OUT/gpu_session.log"
rm -f .whl/nerfacc-*.whl   # nerfacc is not used (issue 12); a carried wheel would only cost install time
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, transformers, pytorch_lightning, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', pytorch_lightning.__version__)"
} 2>&1 | tee -a "$log"
run() { echo "=== $*" | tee -a "$log"; timeout "$1" "${@:2}" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode at the start" | tee -a "$log" | tail -12; }
for part in "$@"; do
  case "$part" in
    tests) run 420 python3 -m pytest -q -n "${TEST_WORKERS:-8}" -rs -p no:cacheprovider tests ;;
    precision) run 300 python3 benchmarks/precision.py --max-seconds "${PRECISION_SECONDS:-240}" --out-dir "$OUT" ;;
    stage1)
      run 150 python3 benchmarks/train_step.py --stage 1 --phase late --steps 20 --warmup 5 --tag after --out "$OUT"
      (cd .bench_base && PYTHONPATH=/tmp/site:$PWD run 150 python3 benchmarks/train_step.py --stage 1 --phase late \
        --steps 20 --warmup 5 --tag before --out "$OUT") ;;
    stage1ref)  # the refactor alone (same random draws as .bench_base, so the same samples per ray)
      (cd .bench_refactor && PYTHONPATH=/tmp/site:$PWD run 150 python3 benchmarks/train_step.py --stage 1 --phase late \
        --steps 20 --warmup 5 --tag refactor --out "$OUT") ;;
    stage2) run 200 python3 benchmarks/train_step.py --stage 2 --steps 24 --warmup 6 --out "$OUT" ;;
    stage3)
      run 240 python3 benchmarks/train_step.py --stage 3 --steps 24 --warmup 6 --out "$OUT"
      run 240 python3 benchmarks/train_step.py --stage 3 --low-vram --steps 24 --warmup 6 --out "$OUT" ;;
    vc)
      run 150 python3 benchmarks/videocrafter_unet.py --out "$OUT/videocrafter_unet.json"
      run 240 python3 benchmarks/train_step.py --config configs/fourdfy_stage_3_vc.yaml --steps 24 --warmup 6 --out "$OUT"
      run 240 python3 benchmarks/train_step.py --config configs/fourdfy_stage_3_low_vram_vc.yaml --steps 24 --warmup 6 --out "$OUT" ;;
    *) echo "unknown part $part" | tee -a "$log" ;;
  esac
done
ls -la "$OUT"
