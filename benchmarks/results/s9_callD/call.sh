# session 9 call D: fourdfy_stage_3_vc with the hash grid's launch order of today (coarse levels interleaved) and
# level-major (the kernel file before session 9), then stage 3 on both fields (the warm-up now covers every
# branch), then stage 1; stops launching once 290 s have passed
export ITER_ARGS="--min-per-branch 2 --breakdown-steps 1"
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
part() {  # seconds-needed tag args...
  local need=$1 tag=$2; shift 2
  if [ $((SECONDS + need)) -gt 290 ]; then echo "=== SKIPPED (time) $tag $*" >> $L; return; fi
  echo "=== $tag $*" >> $L; timeout 100 python3 benchmarks/iteration.py $ITER_ARGS --phase late --steps 10 --out $OUT ${tag:+--tag $tag} "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -8 >> $L
}
cp fourdfy/field_components/hash_grid_triton.py /tmp/new.py
part 90 "" --config configs/fourdfy_stage_3_vc.yaml
cp .bench_base/hash_grid_triton_old.py fourdfy/field_components/hash_grid_triton.py
part 90 levelmajor --config configs/fourdfy_stage_3_vc.yaml
cp /tmp/new.py fourdfy/field_components/hash_grid_triton.py
part 80 "" --config configs/fourdfy_stage_3.yaml --field both --fit-steps 200
part 60 "" --config configs/fourdfy_stage_1.yaml
echo "elapsed $SECONDS" >> $L
