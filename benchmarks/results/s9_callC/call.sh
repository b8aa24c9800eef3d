# session 9 call C: whole GPU suite, hash grid layouts, rows of stage 3 (random and fitted field), 2 and 3_vc (random); stops
# launching parts once 560 s have passed (the call's cap is 600 s)
export TEST_WORKERS=16 ITER_STEPS=10 ITER_SECONDS=100 ITER_ARGS="--min-per-branch 2 --breakdown-steps 1"
bash benchmarks/gpu_session.sh tests hashgrid gridlayouts > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
part() {  # seconds-needed timeout args...
  local need=$1 t=$2; shift 2
  if [ $((SECONDS + need)) -gt 575 ]; then echo "=== SKIPPED (time) $*" >> $L; return; fi
  echo "=== $*" >> $L; timeout $t "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -25 >> $L
}
part 150 200 python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml --phase late --steps 10 --field both --fit-steps 200 --out $OUT
part 90 100 python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_2.yaml --phase late --steps 10 --out $OUT
part 90 100 python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3_vc.yaml --phase late --steps 10 --out $OUT
echo "elapsed $SECONDS" >> $L
