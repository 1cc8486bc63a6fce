#!/usr/bin/env bash
# Four speech objectives on ONE encoder, at equal pretraining wall-clock, each against the same encoder from random
# init: wav2vec 2.0, HuBERT (iteration 1), BEST-RQ and data2vec, pretrained on the 20 min unlabeled part of the
# offline synthesized speech set, fine-tuned for keyword classification and digit CTC on voices never heard before.
#
# The encoder (recipes/payoff/speech-objectives/*.yaml): a 7-layer conv front end (32 channels, the base geometry:
# 400-sample receptive field, one frame per 20 ms) + 2 transformer layers x 64, as recipes/wav2vec2/tiny-cpu.yaml.
# Each objective keeps its own tiny recipe's settings (masking, learning rate, crops, targets); BEST-RQ runs on the
# wav2vec 2.0 encoder (`encoder: wav2vec2`) instead of its conformer, so all four read the waveform the same way.
#
#   1. synthesize the speech set if missing (benchmarks/payoff/make_speech_dataset.py; needs espeak-ng flite sox)
#   2. calibrate: 40 updates of each objective, time per update and start-up time (HuBERT's includes its MFCC k-means)
#   3. pretrain each for max_steps = (BUDGET - start-up) / time per update: equal wall-clock, not equal updates
#   4. payoff (run_finetune.py --compare_with_scratch): keywords (audio-classification tiny recipe, 20 epochs, grid
#      KW_LRS per side chosen on the validation voices, SEEDS seeds); digits (CTC tiny recipe, CTC_STEPS updates, rate
#      CTC_LRS, CTC_SEEDS seeds). Feature encoder trained on both sides (a frozen random conv encoder would cripple the
#      random-init side).
# Jobs run JOBS at a time with one thread each (calibration too, so the per-update times hold for the runs).
# Tables: $OUT/payoff-{keywords,digits}-<model>/payoff.md; stage times: $OUT/timings.txt.
# Run time: about 2 hours on a 2-core CPU (measured stages in docs/payoff/speech.md, "One encoder, four objectives").
#
#   bash recipes/payoff/speech-objectives.sh
#   BUDGET=300 SEEDS=5 OUT=outputs/so bash recipes/payoff/speech-objectives.sh
#   MODELS="best_rq wav2vec2" TASKS=keywords bash recipes/payoff/speech-objectives.sh
#   STEPS_best_rq=735 ... skips the calibration of that model
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/speech-objectives}
DATA=${DATA:-benchmarks/payoff/speech_data}
BUDGET=${BUDGET:-180}          # seconds of pretraining per objective (whole command, start-up included)
JOBS=${JOBS:-2}
MODELS=${MODELS:-"wav2vec2 hubert best_rq data2vec"}
TASKS=${TASKS:-"keywords digits"}
SEEDS=${SEEDS:-3}
KW_LRS=${KW_LRS:-3e-4,1e-3,3e-3}
CTC_SEEDS=${CTC_SEEDS:-2}
CTC_LRS=${CTC_LRS:-3e-3}       # what HuBERT and BEST-RQ chose on digits in a {1e-3, 3e-3} grid
CTC_STEPS=${CTC_STEPS:-3000}
RECIPES=recipes/payoff/speech-objectives
mkdir -p "$OUT"
TIMES="$OUT/timings.txt"
echo "# $(date -u) BUDGET=$BUDGET JOBS=$JOBS" >> "$TIMES"

timed() {  # timed NAME CMD...: run, log to $OUT/NAME.log, record the wall time
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed, see $OUT/$name.log"; return 1; }
  echo "$name $((SECONDS - start)) s" | tee -a "$TIMES"
}
parallel() {  # run the given function over the models, JOBS at a time
  local fn=$1; shift
  local pids=() m
  for m in $MODELS; do
    "$fn" "$m" "$@" & pids+=($!)
    if [ "${#pids[@]}" -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

[ -f "$DATA/README.md" ] || python benchmarks/payoff/make_speech_dataset.py --out "$DATA"

calibrate() {
  local m=$1 var="STEPS_$1"
  [ -n "${!var:-}" ] && { echo "${!var}" > "$OUT/steps-$m"; return; }
  [ -f "$OUT/steps-$m" ] && return
  local start=$SECONDS
  python run_pretrain.py "$RECIPES/$m.yaml" --train_dir "$DATA/unlabeled" --max_steps 40 --warmup_steps 10 --eval_steps 0 \
    --save_steps 0 --output_dir "$OUT/calibrate-$m" --overwrite_output_dir true > "$OUT/calibrate-$m.log" 2>&1
  python - "$OUT/calibrate-$m/training_log.jsonl" $((SECONDS - start)) "$BUDGET" > "$OUT/steps-$m" <<'PY'
import json, sys
t = {r["step"]: r["time"] for r in map(json.loads, open(sys.argv[1])) if "loss" in r}
per_update = (t[40] - t[10]) / 30
start_up = int(sys.argv[2]) - (t[40] - t[1])
print(max(int((float(sys.argv[3]) - start_up) / per_update), 1))
PY
  echo "calibrate-$m: $(cat "$OUT/steps-$m") updates for ${BUDGET} s" | tee -a "$TIMES"
}
pretrain() {
  local m=$1
  [ -f "$OUT/pretrain-$m/train_results.json" ] && return
  timed "pretrain-$m" python run_pretrain.py "$RECIPES/$m.yaml" --train_dir "$DATA/unlabeled" --max_steps "$(cat "$OUT/steps-$m")" \
    --output_dir "$OUT/pretrain-$m" --overwrite_output_dir true
}
payoff() {
  local m=$1 task=$2 args
  case $task in
    keywords) args=(recipes/finetune/audio-classification-tiny-cpu.yaml --seeds "$SEEDS" --learning_rates "$KW_LRS") ;;
    digits) args=(recipes/finetune/speech-recognition-ctc-tiny-cpu.yaml --max_steps "$CTC_STEPS" --eval_steps 0
                  --seeds "$CTC_SEEDS" --learning_rates "$CTC_LRS") ;;
  esac
  timed "payoff-$task-$m" python run_finetune.py "${args[@]}" --model_name_or_path "$OUT/pretrain-$m" \
    --train_dir "$DATA/$task/train" --validation_dir "$DATA/$task/validation" --test_dir "$DATA/$task/test" \
    --validation_split_percentage 0 --freeze_feature_encoder false --compare_with_scratch true --label_fractions 1.0 \
    --output_dir "$OUT/payoff-$task-$m" --resume_from_checkpoint latest   # an interrupted payoff keeps its finished runs
}

parallel calibrate
parallel pretrain
for task in $TASKS; do parallel payoff "$task"; done
echo "total $SECONDS s" | tee -a "$TIMES"
for f in "$OUT"/payoff-*/payoff.md; do [ -f "$f" ] || continue; echo; echo "## $f"; sed -n '/^| label budget | train/,/^$/p' "$f"; done
