#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried wheels (made here by `bash benchmarks/gpu_wheels.sh .whl`),
# print versions, run the named parts.
#   bash benchmarks/gpu_session.sh tests hashgrid s3 vc s1 s2 estimate
# writes JSON + a log under $OUT (or benchmarks/results/). Parts:
#   tests      the whole test suite on the GPU machine (fast paths compared there against the pure paths)
#   gridlayouts  benchmarks/hash_grid.py with the points of a video step (16 frames of one camera) and clustered
#              in a small ball: how much atomic collisions slow the backward (JSONs hash_grid_<card>_<layout>.json)
#   precision  benchmarks/precision.py (every frozen network, every dtype)
#   hashgrid   benchmarks/hash_grid.py (the hash grid and its MLP alone, 1 M points, 3-D and 4-D, fast vs torch)
#   base1 base3  fourdfy_stage_1 / _3, random field, fast paths on only (baselines for memfrac and vaeloop)
#   s1 s2 s3 vc s3lv vclv   benchmarks/iteration.py on fourdfy_stage_1, _2, _3, _3_vc, _3_low_vram,
#              _3_low_vram_vc: fast paths on (random and fitted field) then off (random field); stages 1 and 2
#              s1early/s2early: their early phase (64^2 multi-view), fast paths on only; s1on/s2on/s3on: fast paths on only; s1off: off only;
#              s3lv and vclv: fast paths on only. ITER_PROFILE=N adds a torch.profiler table of N steps
#              (ITER_PROFILE_SORT=cpu sorts it by host time); ITER_PY_PROFILE=N adds N steps under cProfile
#              (Python functions by host time; also in base1/base3)
#   cap24      stage 3 (ZeroScope and VideoCrafter2) with PyTorch's GPU memory capped at 22 GiB (a 24 GB card)
#   vae        benchmarks/vae_encoder.py (the video branch's VAE encoder: layout, cudnn.benchmark, frames per call)
#   memfrac    system.renderer.checkpoint_memory_fraction=0.5 (skip render checkpointing where it fits): stages 1
#              and 3 on the whole card, stage 3 under the 22 GiB cap (tagged runs: speed_table lists them apart)
#   vaemem     system.guidance_video.vae_checkpoint_memory_fraction=0.5 (skip the VAE encoder's recompute where it
#              fits): stage 3, then with memfrac's setting too, then both under the 22 GiB cap (tagged runs)
#   levers1 levers2 levers3  one stage (random field, fast paths on), then a tagged run with the optimizer unfused
#   threads    stage 3 with --cpu-threads 4 (torch's host threads for the camera batches; tagged run beside base3)
#   vaeloop    stage 3 with the video guidances' VAE encoder channels-last, then with cuDNN's algorithm search
#              (trainer.benchmark=true): tagged runs beside the plain s3on
#   guidancetests  the guidance tests alone (their CUDA-only comparisons of the graphed and eager paths)
#   profile3   fourdfy_stage_3, one process per branch (multi-view, single view, video alone, by their probabilities),
#              a torch.profiler table of ITER_PROFILE (default 2) steps each: where each branch's GPU time goes;
#              then fourdfy_stage_3_vc's video branch alone
#   levers8    stages 3 and 2 (random field, fast paths on), each then with the VSD LoRA loss's CUDA graphs off:
#              tagged runs "s8off" (session 8 ran it as two parts; their "off" runs also had a switch since removed
#              off: TF32 matmuls in call B, the video VAE's math attention in call D)
#   newtests   the tests of session 8's GPU code alone (graphed LoRA loss, the hash grid's vector atomics)
#   estimate   the whole-prompt estimates from the iteration JSONs in $OUT (fast and off)
#   ab         a same-call A/B of one setting: for each of AB_CONFIGS (stage names, e.g. "1 3 3_vc"), AB_ROUNDS
#              (default 2) rounds of a run with today's defaults (tag ${AB_TAG}_on<round>) then one with AB_SET (a
#              space-separated list of key=value overrides, or AB_SET_<stage> for one config; tag
#              ${AB_TAG}_off<round>), alternating processes so
#              that drift between processes hits both sides alike; short runs (random field, late phase, 10
#              timed steps, 2 per branch); a run is not started when it could end after AB_DEADLINE seconds of the
#              session script (default 540; the device allows 600 per call); AB_NEED sets the seconds a run may
#              need (default 45 for stage 1, 60 for the others; a run is killed 40 s after it)
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
log="$OUT/gpu_session.log"
rm -f .whl/nerfacc-*.whl   # nothing uses nerfacc (its fast path was removed): keep its JIT build out
# once per machine: a second invocation in the same call finds the marker and skips the install
if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$(ls .whl)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && ls .whl > /tmp/site/.wheels
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, transformers, pytorch_lightning, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'lightning', pytorch_lightning.__version__)"
} 2>&1 | tee -a "$log"
run() { echo "=== $*" | tee -a "$log"; timeout "$1" "${@:2}" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode at the start" | tee -a "$log" | tail -30; }
# one stage config, fast paths on (random, then fitted field) and off (random field), one process each
ITER_ARGS=${ITER_ARGS:-}  # e.g. "--min-per-branch 3 --breakdown-steps 2" for a shorter call
iter_on() {
  run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$@" --steps "${ITER_STEPS:-20}" --field both --fit-steps "${FIT_STEPS:-300}" \
    ${ITER_PROFILE:+--profile "$ITER_PROFILE" --profile-sort "${ITER_PROFILE_SORT:-cuda}"} \
    ${ITER_PY_PROFILE:+--py-profile "$ITER_PY_PROFILE"} --out "$OUT"
}
iter_off() {
  run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$@" --steps "${ITER_STEPS:-20}" --fast-paths off --out "$OUT"
}
iter() { iter_on "$@"; iter_off "$@"; }
# one stage (1, 2 or 3; the late phase), random field, fast paths on, then a run tagged $2 with the overrides after it
on_off() {
  local c="configs/fourdfy_stage_$1.yaml" tag=$2; shift 2
  run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$c" --phase late --steps "${ITER_STEPS:-20}" --out "$OUT"
  run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$c" --phase late --steps "${ITER_STEPS:-20}" \
    --tag "$tag" --out "$OUT" "$@"
}
# one short run of the A/B part, unless it could pass the deadline: seconds-needed tag config overrides...
ab_run() {
  local need=$1 tag=$2 config=$3; shift 3
  if [ $((SECONDS + need)) -gt "${AB_DEADLINE:-540}" ]; then echo "=== SKIPPED (time, at $SECONDS s) $tag $config" | tee -a "$log"; return; fi
  echo "=== [$SECONDS s] $tag $config $*" | tee -a "$log"
  timeout $((need + 40)) python3 benchmarks/iteration.py --config "$config" --min-per-branch 2 --breakdown-steps 1 --phase late \
    --steps 10 --tag "$tag" --out "$OUT" "$@" 2>&1 | grep -v -E "LeafSpec|litlogger|eval mode" | tail -9 | tee -a "$log"
}
for part in "$@"; do
  case "$part" in
    tests) run 420 python3 -m pytest -q -n "${TEST_WORKERS:-8}" -rs -p no:cacheprovider tests ;;
    precision) run 300 python3 benchmarks/precision.py --max-seconds "${PRECISION_SECONDS:-240}" --out-dir "$OUT" ;;
    hashgrid) run 120 python3 benchmarks/hash_grid.py --out "$OUT" ;;
    gridlayouts) for l in video clustered; do run 120 python3 benchmarks/hash_grid.py --layout "$l" --out "$OUT"; done ;;
    vae) run 240 python3 benchmarks/vae_encoder.py --out "$OUT" ;;
    s1) iter configs/fourdfy_stage_1.yaml --phase late ;;
    s2) iter configs/fourdfy_stage_2.yaml --phase late ;;
    s1on) iter_on configs/fourdfy_stage_1.yaml --phase late ;;
    s2on) iter_on configs/fourdfy_stage_2.yaml --phase late ;;
    s1off) iter_off configs/fourdfy_stage_1.yaml --phase late ;;
    s1early) iter_on configs/fourdfy_stage_1.yaml --phase early ;;
    s2early) iter_on configs/fourdfy_stage_2.yaml --phase early ;;
    guidancetests) run 300 python3 -m pytest -q -n 4 -rs -p no:cacheprovider tests/guidance/test_vsd_guidance.py \
      tests/guidance/test_cuda_graph.py tests/guidance/test_zeroscope_guidance.py tests/guidance/test_videocrafter_guidance.py ;;
    s3) iter configs/fourdfy_stage_3.yaml ;;
    s3on) iter_on configs/fourdfy_stage_3.yaml ;;
    base1|base3)  # random field only, fast paths on: the baseline of memfrac / vaeloop in the same call
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "configs/fourdfy_stage_${part#base}.yaml" \
        --phase late --steps "${ITER_STEPS:-20}" ${ITER_PY_PROFILE:+--py-profile "$ITER_PY_PROFILE"} --out "$OUT" ;;
    cap24)  # the paper stage-3 configs on an emulated 24 GB card (PyTorch capped at 22 GiB): an OOM fails the run
      for c in configs/fourdfy_stage_3.yaml configs/fourdfy_stage_3_vc.yaml; do
        run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$c" --memory-cap-gib 22 \
          --steps "${ITER_STEPS:-20}" --tag cap22 --out "$OUT"
      done ;;
    vc) iter configs/fourdfy_stage_3_vc.yaml ;;
    vaeloop)
      for setting in system.guidance_video.vae_channels_last=true trainer.benchmark=true; do
        tag=${setting%%=*}
        run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
          --steps "${ITER_STEPS:-20}" --tag "${tag##*.}" --out "$OUT" "$setting"
      done ;;
    memfrac)
      for c in configs/fourdfy_stage_1.yaml configs/fourdfy_stage_3.yaml; do
        run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config "$c" --steps "${ITER_STEPS:-20}" \
          --tag memfrac0.5 --out "$OUT" system.renderer.checkpoint_memory_fraction=0.5
      done
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
        --memory-cap-gib 22 --steps "${ITER_STEPS:-20}" --tag cap22_memfrac0.5 --out "$OUT" \
        system.renderer.checkpoint_memory_fraction=0.5 ;;
    vaemem)  # the VAE encoder without its recompute where it fits (vae_checkpoint_memory_fraction): stage 3 alone,
      # with the render's memfrac too, and both under the 22 GiB cap (tagged runs beside base3)
      v=system.guidance_video.vae_checkpoint_memory_fraction=0.5 r=system.renderer.checkpoint_memory_fraction=0.5
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
        --steps "${ITER_STEPS:-20}" --tag vaemem0.5 --out "$OUT" "$v"
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
        --steps "${ITER_STEPS:-20}" --tag vaemem0.5_memfrac0.5 --out "$OUT" "$v" "$r"
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
        --memory-cap-gib 22 --steps "${ITER_STEPS:-20}" --tag cap22_vaemem0.5_memfrac0.5 --out "$OUT" "$v" "$r" ;;
    threads)  # stage 3 with 4 CPU threads for torch's host-side tensor work (camera batches): a tagged run beside base3
      run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py $ITER_ARGS --config configs/fourdfy_stage_3.yaml \
        --steps "${ITER_STEPS:-20}" --cpu-threads 4 --tag threads4 --out "$OUT" ;;
    levers1|levers2|levers3)  # one stage, then with the optimizer's default implementation (unfused)
      on_off "${part#levers}" unfused system.optimizer.fused=false ;;
    profile3)
      for b in "mv data.prob_multi_view=1.0" "sv data.prob_multi_view=0.0 data.single_view.prob_single_view_video=0.0" \
               "video data.prob_multi_view=0.0 data.single_view.prob_single_view_video=1.0" \
               "vcvideo data.prob_multi_view=0.0 data.single_view.prob_single_view_video=1.0"; do
        set -- $b; c=configs/fourdfy_stage_3.yaml; [ "$1" = vcvideo ] && c=configs/fourdfy_stage_3_vc.yaml
        run "${ITER_SECONDS:-240}" python3 benchmarks/iteration.py --config "$c" --steps 3 \
          --min-per-branch 1 --breakdown-steps 1 --no-count-syncs --profile "${ITER_PROFILE:-2}" \
          --profile-sort "${ITER_PROFILE_SORT:-cuda}" --tag "only_$1" --out "$OUT" "${@:2}"
      done ;;
    levers8)  # stage 3, then stage 2, each then with the graphed LoRA loss off
      for stage in 3 2; do on_off "$stage" s8off system.guidance.cuda_graph_lora_loss=false; done ;;
    newtests) run 300 python3 -m pytest -q -n 4 -rs -p no:cacheprovider tests/guidance/test_cuda_graph.py \
      tests/guidance/test_vsd_guidance.py tests/guidance/test_zeroscope_guidance.py tests/field_components/ ;;
    s3lv) iter_on configs/fourdfy_stage_3_low_vram.yaml ;;
    vclv) iter_on configs/fourdfy_stage_3_low_vram_vc.yaml ;;
    estimate)
      for mode in fast off; do
        files=$(ls "$OUT"/iteration_stage_1_*_"$mode"_*.json "$OUT"/iteration_stage_2_*_"$mode"_*.json \
                   "$OUT"/iteration_stage_3_late_"$mode"_*.json 2>/dev/null)
        [ -n "$files" ] && run 60 python3 benchmarks/iteration.py --estimate $files --estimate-field random
      done ;;
    ab)
      for stage in ${AB_CONFIGS:-1 3}; do
        need=60; [ "$stage" = 1 ] && need=45  # stage 1 took 25-35 s per run in sessions 10-11, stage 3 36-50 s
        need=${AB_NEED:-$need}  # more for runs that compile (the VAE encoder: some 35 s per graph)
        sets="AB_SET_$stage"; sets=${!sets:-${AB_SET:?AB_SET=key=value needed}}  # AB_SET_3_vc=... for one config
        for round in $(seq "${AB_ROUNDS:-2}"); do
          ab_run "$need" "${AB_TAG:-ab}_on$round" "configs/fourdfy_stage_$stage.yaml"
          ab_run "$need" "${AB_TAG:-ab}_off$round" "configs/fourdfy_stage_$stage.yaml" $sets
        done
      done ;;
    *) echo "unknown part $part" | tee -a "$log" ;;
  esac
done
ls -la "$OUT"
