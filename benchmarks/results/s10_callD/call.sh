# session 10 call D: where stage 3's time goes at today's code, for the next levers: the Python functions by host
# time inside and between three steps (cProfile), then torch.profiler tables of the multi-view and video branches
# alone (two steps each); stops launching at 200 s
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
mkdir -p $OUT/json
part() {  # seconds-needed tag args...
  local need=$1 tag=$2; shift 2
  if [ $((SECONDS + need)) -gt 200 ]; then echo "=== SKIPPED (time) $tag $*" >> $L; return; fi
  echo "=== [$SECONDS s] $tag $*" >> $L
  timeout 90 python3 benchmarks/iteration.py --phase late --out $OUT/json --tag $tag "$@" 2>&1 \
    | grep -v -E "LeafSpec|litlogger|eval mode" >> $L
}
part 70 pyprof --config configs/fourdfy_stage_3.yaml --steps 6 --min-per-branch 1 --breakdown-steps 1 --no-count-syncs --py-profile 3
part 45 only_mv --config configs/fourdfy_stage_3.yaml --steps 3 --min-per-branch 1 --breakdown-steps 1 --no-count-syncs --profile 2 data.prob_multi_view=1.0
part 45 only_video --config configs/fourdfy_stage_3.yaml --steps 3 --min-per-branch 1 --breakdown-steps 1 --no-count-syncs --profile 2 data.prob_multi_view=0.0 data.single_view.prob_single_view_video=1.0
echo "elapsed $SECONDS" >> $L
tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
