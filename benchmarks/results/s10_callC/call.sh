# session 10 call C (at the commit of train_no_grad_chunk_size): fourdfy_stage_3_vc with the no-grad chunk of 10^6
# samples (default) and 4D-fy's 160,000, alternating, then fourdfy_stage_3_low_vram likewise; stops at 380 s
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
mkdir -p $OUT/json
part() {  # seconds-needed tag args...
  local need=$1 tag=$2; shift 2
  if [ $((SECONDS + need)) -gt 380 ]; then echo "=== SKIPPED (time) $tag $*" >> $L; return; fi
  echo "=== [$SECONDS s] $tag $*" >> $L
  timeout 100 python3 benchmarks/iteration.py --min-per-branch 2 --breakdown-steps 1 --phase late --steps 10 \
    --out $OUT/json ${tag:+--tag $tag} "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -9 >> $L
}
C=system.renderer.base_renderer.train_no_grad_chunk_size=160000
part 55 "" --config configs/fourdfy_stage_3_vc.yaml
part 55 chunk160k --config configs/fourdfy_stage_3_vc.yaml $C
part 55 chunk1m2 --config configs/fourdfy_stage_3_vc.yaml
part 55 chunk160k2 --config configs/fourdfy_stage_3_vc.yaml $C
part 60 "" --config configs/fourdfy_stage_3_low_vram.yaml
part 60 chunk160k --config configs/fourdfy_stage_3_low_vram.yaml $C
echo "elapsed $SECONDS" >> $L
tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
