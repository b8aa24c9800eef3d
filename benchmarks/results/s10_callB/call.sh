# session 10 call B (at cd994b5, private gradient copies on): the whole test suite, then every stage config at
# today's defaults (random field; stage 1 also fitted); stops launching at 540 s; JSONs tarred (one file back)
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
echo "=== [$SECONDS s] tests" >> $L
timeout 300 python3 -m pytest -q -n 16 -rs -p no:cacheprovider tests 2>&1 | tail -40 >> $L
mkdir -p $OUT/json
part() {  # seconds-needed args...
  local need=$1; shift
  if [ $((SECONDS + need)) -gt 540 ]; then echo "=== SKIPPED (time) $*" >> $L; return; fi
  echo "=== [$SECONDS s] $*" >> $L
  timeout 120 python3 benchmarks/iteration.py --min-per-branch 2 --breakdown-steps 1 --phase late --steps 10 \
    --out $OUT/json "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -12 >> $L
}
part 70 --config configs/fourdfy_stage_3.yaml
part 70 --config configs/fourdfy_stage_3_vc.yaml
part 60 --config configs/fourdfy_stage_2.yaml
part 60 --config configs/fourdfy_stage_1.yaml --field both --fit-steps 200
echo "elapsed $SECONDS" >> $L
tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
