# session 10 call A: the hash grid alone (three layouts, with and without private gradient copies), then the same
# stage runs with the copies on (default) and off (HT_SET=PRIVATE_COPIES=1), alternating; stops launching at 470 s
bash benchmarks/gpu_session.sh hashgrid gridlayouts > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
part() {  # seconds-needed tag HT_SET args...
  local need=$1 tag=$2 set=$3; shift 3
  if [ $((SECONDS + need)) -gt 470 ]; then echo "=== SKIPPED (time) $tag $*" >> $L; return; fi
  echo "=== [$SECONDS s] $tag HT_SET=$set $*" >> $L
  HT_SET=$set timeout 110 python3 .bench_base/iter_with.py --min-per-branch 2 --breakdown-steps 1 --phase late \
    --steps 10 --out $OUT --tag $tag "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -9 >> $L
}
part 50 on1 "" --config configs/fourdfy_stage_1.yaml
part 50 off1 PRIVATE_COPIES=1 --config configs/fourdfy_stage_1.yaml
part 80 on1 "" --config configs/fourdfy_stage_3.yaml
part 80 off1 PRIVATE_COPIES=1 --config configs/fourdfy_stage_3.yaml
part 50 on2 "" --config configs/fourdfy_stage_1.yaml
part 50 off2 PRIVATE_COPIES=1 --config configs/fourdfy_stage_1.yaml
part 80 on1 "" --config configs/fourdfy_stage_3_vc.yaml
part 80 off1 PRIVATE_COPIES=1 --config configs/fourdfy_stage_3_vc.yaml
echo "elapsed $SECONDS" >> $L
