#!/usr/bin/env bash
# Float8 on the GPU machine. PHASE=tests builds the CUDA variant and runs the FP8 GPU tests
# (TESTS= another selection); PHASE=bench measures Troupe bf16 and each FP8 recipe on the 1.50B
# shapes (batch 4 x 4096), and torchtitan's bf16 and FP8 anchors in the same call (TT=0 skips
# them; SHAPE=8b8 the Llama 3 8B blocks x 8 layers at batch 1 x 8192). PHASE=curves: STEPS (300)
# steps per recipe on the bundled text, the loss curves against bf16's. PHASE=profile: the step
# profile of RECIPE by kernel category. Logs and tables in $OUT.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
source .device/gpu-env.sh
export LD_LIBRARY_PATH=/opt/deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
[ -x build-gpu/troupe_bench ] || { OUT=$out TARGETS="troupe troupe_tests troupe_bench" bash tools/bench/gpu_build.sh || exit 1; }
FP8="--model.converters quantize.linear.float8"
SHAPES=()
anchor_shape=()
if [ "${SHAPE:-1p5b}" = 8b8 ]; then
  SHAPES=(--model.flavor 8B --model.n_layers 8 --training.local_batch_size 1 --training.seq_len 8192)
  anchor_shape=(--training.local_batch_size 1 --training.seq_len 8192)
  export TT_SHAPE=8b8
fi
case "${PHASE:-tests}" in
tests)
  build-gpu/tests/troupe_tests "${TESTS:-FP8*,an FP8 projection*,a run saved with FP8*,200 steps of the debug model with each FP8*}" > "$out/tests.log" 2>&1
  tail -5 "$out/tests.log"
  ;;
bench)
  extra=(${EXTRA:-})
  [ "${TT:-1}" != 0 ] && bash .device/torchtitan/setup.sh data/kjv/kjv.txt .device > "$out/tt-setup.log" 2>&1
  for recipe in ${RECIPES:-bf16 tensorwise rowwise blockwise}; do
    args=()
    [ "$recipe" != bf16 ] && args=($FP8 --quantize.linear.float8.recipe_name "$recipe")
    TT=0 bash tools/bench/gpu_vs_torchtitan.sh .device/torchtitan llama3_1p5b configs/llama3_1.5b.toml \
      .device/llama3_1.tokenizer.json 30 "${SHAPES[@]}" "${args[@]}" "${extra[@]}" > "$out/troupe-$recipe.log" 2>&1
    echo "troupe $recipe: $(grep '^| troupe ' "$out/troupe-$recipe.log")"
  done
  if [ "${TT:-1}" != 0 ]; then
    for anchor in ${ANCHORS:-llama3_1p5b llama3_1p5b_fp8_tensorwise llama3_1p5b_fp8_rowwise}; do
      TT_TAIL=4 .device/torchtitan/run.sh "$anchor" "$out/tt-$anchor.log" --training.steps 30 "${anchor_shape[@]}" > /dev/null 2>&1
      echo "torchtitan $anchor: $(grep -E 'step: +(20|30)' "$out/tt-$anchor.log" | tail -2 | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"
    done
  fi
  ;;
curves)
  # Loss parity: STEPS (300) steps of the 1.50B shapes on the bundled text per run, the loss of
  # every step and the throughput line. A run is a recipe (bf16 or an FP8 one), with -sN for seed
  # N (0 if none): e.g. RECIPES="bf16-s1 tensorwise-s1". After each run, $out/curves.csv holds
  # every run's curve, this call's (columns RECIPE-sSEED-LABEL, LABEL the date unless given) and
  # those kept in KEPT (the last CSV in docs/perf; KEPT= none), and $out/curves.md the summary by
  # tools/bench/loss_curves.py: two files however many runs (a call's files are few).
  runs=/tmp/${LABEL:-$(date +%Y%m%d)}
  mkdir -p "$runs"
  kept=${KEPT-docs/perf/2026-12-08-stop43-fp8-loss-curves.csv}
  for run in ${RECIPES:-bf16 tensorwise rowwise rowwise_with_gw_hp blockwise}; do
    recipe=${run%-s*}
    seed=0
    [ "$recipe" != "$run" ] && seed=${run##*-s}
    args=(--job.seed "$seed")
    [ "$recipe" != bf16 ] && args+=($FP8 --quantize.linear.float8.recipe_name "$recipe")
    rm -rf "/tmp/curve_$run"
    build-gpu/troupe_bench throughput --config configs/llama3_1.5b.toml --warmup 10 \
      --model.tokenizer_path .device/llama3_1.tokenizer.json --training.steps "${STEPS:-300}" --metrics.log_freq 1 \
      --job.dump_folder "/tmp/curve_$run" "${SHAPES[@]}" "${args[@]}" > "$runs/curve-$run.log" 2>&1
    find "/tmp/curve_$run" -name metrics.jsonl -exec cp {} "$runs/curve-$run.jsonl" \;
    rm -rf "/tmp/curve_$run"
    echo "$run: $(grep '^{"runner"' "$runs/curve-$run.log" || tail -2 "$runs/curve-$run.log")"
    python3 tools/bench/loss_curves.py "$runs" --csv "$out/curves.csv" ${kept:+--from-csv "$kept"} > "$out/curves.md"
  done
  cat "$out/curves.md"
  ;;
profile)
  build-gpu/troupe_bench step-profile --config configs/llama3_1.5b.toml --model.tokenizer_path .device/llama3_1.tokenizer.json \
    "${SHAPES[@]}" $FP8 --quantize.linear.float8.recipe_name "${RECIPE:-tensorwise}" --vocab 128256 --steps 3 \
    > "$out/profile-${RECIPE:-tensorwise}.log" 2>&1
  python3 tools/bench/kernel_breakdown.py < "$out/profile-${RECIPE:-tensorwise}.log" | tee "$out/breakdown-${RECIPE:-tensorwise}.md"
  ;;
esac
