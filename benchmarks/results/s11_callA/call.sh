# session 11 call A: the GPU tests of the changed rooms (hash grid with attach_gradient on Triton, renderers,
# geometry), then the culling-encoding reuse A/B: defaults against reuse_culling_encoding=false, alternating
# processes in one call (stage 1 two rounds, stage 3 and stage 3 vc one round each); then the video VAE encoder
# eager against torch.compile (benchmarks/vae_encoder.py --compile off on) in the time left
export TORCH_CUDA_ARCH_LIST=9.0
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
echo "=== [$SECONDS s] tests" >> $L
timeout 150 python3 -m pytest -q -n 16 -rs -p no:cacheprovider tests/field_components tests/renderers tests/geometry 2>&1 | tail -15 >> $L
AB_TAG=reuse AB_SET=system.renderer.reuse_culling_encoding=false AB_CONFIGS="1" AB_ROUNDS=2 AB_DEADLINE=$((430 - SECONDS)) \
  bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
AB_TAG=reuse AB_SET=system.renderer.reuse_culling_encoding=false \
  AB_SET_3_vc=system.renderer.base_renderer.reuse_culling_encoding=false AB_CONFIGS="3 3_vc" AB_ROUNDS=1 AB_DEADLINE=$((430 - SECONDS)) \
  bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
left=$((590 - SECONDS))
echo "=== [$SECONDS s] vae encoder eager vs compiled (timeout $left s)" >> $L
[ $left -gt 60 ] && timeout $left python3 benchmarks/vae_encoder.py --chunks 0 --layouts nchw --cudnn-benchmark off \
  --compile off on --out $OUT 2>&1 | grep -v Warning | tail -12 >> $L
echo "elapsed $SECONDS" >> $L
mkdir -p $OUT/json && mv $OUT/*.json $OUT/json/ 2>/dev/null; tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
