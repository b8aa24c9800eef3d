# session 12 call A: system.defer_step_reads on (default) and off, alternating processes: stage 1 two rounds, stage 3
# one round (timed steps on the GPU's timeline between CUDA events, not synchronised); then ZeroScope's UNet alone:
# eager and CUDA graph, then torch.compile (plain and inside the CUDA graph)
bash benchmarks/gpu_session.sh > /dev/null 2>&1   # installs the wheels, prints versions
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
L=$OUT/gpu_session.log
AB_TAG=defer AB_SET=system.defer_step_reads=false AB_CONFIGS="1" AB_ROUNDS=2 AB_NEED=45 \
  AB_DEADLINE=$((200 - SECONDS)) bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
AB_TAG=defer AB_SET=system.defer_step_reads=false AB_CONFIGS="3" AB_ROUNDS=1 AB_NEED=110 \
  AB_DEADLINE=$((400 - SECONDS)) bash benchmarks/gpu_session.sh ab > /dev/null 2>&1
echo "=== [$SECONDS s] zeroscope unet eager, graph" >> $L
timeout 60 python3 benchmarks/zeroscope_unet.py --out $OUT/zeroscope_unet_nvidia-h200.json >> $L 2>&1
echo "=== [$SECONDS s] zeroscope unet compiled (timeout $((580 - SECONDS)) s)" >> $L
timeout $((580 - SECONDS)) python3 benchmarks/zeroscope_unet.py --compile --iters 20 \
  --out $OUT/zeroscope_unet_compiled_nvidia-h200.json >> $L 2>&1
echo "elapsed $SECONDS" >> $L
mkdir -p $OUT/json && mv $OUT/*.json $OUT/json/ 2>/dev/null; tar -C $OUT -cf $OUT/json.tar json && rm -rf $OUT/json
