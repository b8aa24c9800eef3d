# session 11 call C: the whole test suite again (call B had 1 failure whose name its log cut off; the full pytest
# output now comes back as pytest.log), then the compiled VAE encoder A/B on fourdfy_stage_3_vc (its VAE runs in
# fp32 and encodes 14 of 16 frames one by one without gradient); nothing is started that could end after ~500 s
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
echo "=== [$SECONDS s] tests" >> $L
timeout 290 python3 -m pytest -q -n 16 -rfs -p no:cacheprovider --tb=short tests > $OUT/pytest.log 2>&1
grep -E "^FAILED|^ERROR| passed| failed" $OUT/pytest.log >> $L
AB_TAG=compile AB_SET_3_vc=system.guidance_video.compile_vae_encoder=false AB_CONFIGS="3_vc" AB_ROUNDS=1 AB_NEED=100 \
  AB_DEADLINE=$((495 - SECONDS)) bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
echo "elapsed $SECONDS" >> $L
mkdir -p $OUT/json && mv $OUT/*.json $OUT/json/ 2>/dev/null; tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
