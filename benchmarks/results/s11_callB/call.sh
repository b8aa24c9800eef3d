# session 11 call B: the whole test suite on the GPU machine (the culling-encoding reuse, attach_gradient on Triton,
# the compiled VAE encoder against eager on CUDA), then the compiled VAE encoder A/B in the training loop: stage 3
# (ZeroScope) with today's defaults against compile_vae_encoder=false, alternating processes, time-guarded
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
echo "=== [$SECONDS s] tests" >> $L
timeout 300 python3 -m pytest -q -n 16 -rs -p no:cacheprovider tests 2>&1 | tail -40 >> $L
AB_TAG=compile AB_SET=system.guidance_video.compile_vae_encoder=false AB_CONFIGS="3" AB_ROUNDS=1 AB_NEED=110 \
  AB_DEADLINE=$((575 - SECONDS)) bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
echo "elapsed $SECONDS" >> $L
mkdir -p $OUT/json && mv $OUT/*.json $OUT/json/ 2>/dev/null; tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
