# session 12 call B: the whole test suite on the GPU machine (the compiled video UNet against eager on CUDA, the
# deferred step reads), then system.guidance_video.compile_unet on (default) and off on fourdfy_stage_3 (ZeroScope),
# alternating processes, time-guarded
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
echo "=== [$SECONDS s] tests" >> $L
timeout 320 python3 -m pytest -q -n 16 -rs -p no:cacheprovider tests > $OUT/pytest.log 2>&1
tail -5 $OUT/pytest.log >> $L; grep -E "^(FAILED|ERROR)" $OUT/pytest.log >> $L
AB_TAG=compileunet AB_SET=system.guidance_video.compile_unet=false AB_CONFIGS="3" AB_ROUNDS=1 AB_NEED=200 \
  AB_DEADLINE=$((590 - SECONDS)) bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
echo "elapsed $SECONDS" >> $L
mkdir -p $OUT/json && mv $OUT/*.json $OUT/json/ 2>/dev/null; tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
