#!/usr/bin/env bash
# Speech payoff from scratch, one command: does the tiny wav2vec 2.0 / HuBERT pretraining beat the same
# encoder from random init on keyword classification and digit recognition, for voices never heard in training?
#   1. synthesize the offline speech set (benchmarks/payoff/make_speech_dataset.py: many espeak-ng/flite voices,
#      train / validation / test voices disjoint by variant; 20 min unlabeled; ~1 min)
#   2. pretrain wav2vec 2.0 (recipes/wav2vec2/tiny-cpu.yaml, as shipped: 2000 updates) and HuBERT iteration 1
#      (recipes/hubert/tiny-cpu-iter1.yaml with max_steps 2000 instead of 400: 20 min of audio instead of 112 s)
#      on the unlabeled part
#   3. payoff (run_finetune.py --compare_with_scratch), test on the unseen test voices, learning rate chosen per
#      side on the validation voices (same grid for both sides):
#      keywords (audio-classification tiny recipe as shipped, 20 epochs): both models, 3 seeds,
#        HuBERT grid {1e-3, 3e-3, 1e-2}, wav2vec 2.0 grid {3e-4, 1e-3, 3e-3, 1e-2};
#      digits (speech-recognition-ctc tiny recipe with 3000 updates instead of 300: at 300-1000 updates
#        neither side leaves the CTC blank plateau, WER 1.0): HuBERT only, 2 seeds, grid {1e-3, 3e-3}.
#      Feature encoder NOT frozen (freeze_feature_encoder false) on both sides: a frozen random conv encoder
#      would handicap the random-init baseline.
# Tables: $OUT/payoff-{keywords,digits}-{wav2vec2,hubert}/payoff.md; stage times: $OUT/timings.txt.
# Measured run time (2026-12-02, 2-core CPU shared with two other jobs, OMP_NUM_THREADS=1), sum of the measured
# stages: about 84 min (data 50 s, pretraining 2 min, keyword payoffs 14 + 38 min, digit payoff 30 min);
# per-stage numbers in docs/payoff/speech.md. TASKS=keywords MODELS=hubert alone: about 17 min. Since the wav2vec 2.0
# recipe pretrains for 2000 updates (2026-12-05): its pretraining about 4.5 min, its keyword payoff 24 min (2 threads).
#
#   bash recipes/payoff/speech.sh
#   SEEDS=5 OUT=outputs/speech-payoff bash recipes/payoff/speech.sh
#   TASKS=keywords MODELS=hubert bash recipes/payoff/speech.sh        # one cell only
#   (a finished pretraining in $OUT is reused; REPRETRAIN=1 pretrains again)
#   DIGITS_MODELS="hubert wav2vec2" bash recipes/payoff/speech.sh      # also wav2vec 2.0 on digits (8 runs: 64 min
#                                                                       measured beside 1-2 other jobs)
#   MODELS=hubert2 TASKS=keywords bash recipes/payoff/speech.sh    # HuBERT iteration 2 (pretrains iteration 1 first
#        when $OUT has none; measured: 88 s + 93 s of pretraining, 618 s of keyword payoff)
#   MODELS="best_rq data2vec" TASKS=keywords bash recipes/payoff/speech.sh   # BEST-RQ / data2vec (tiny recipes,
#        update counts for about HuBERT's pretraining wall time)
#   LABELS=0.1 TASKS=keywords MODELS="hubert wav2vec2" bash recipes/payoff/speech.sh   # 10% of the labeled clips
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: one thread is fastest on a busy CPU
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/speech-payoff}
DATA=${DATA:-benchmarks/payoff/speech_data}
SEEDS=${SEEDS:-3}
CTC_SEEDS=${CTC_SEEDS:-2}  # a CTC run is ~4 min here
CTC_LRS=${CTC_LRS:-1e-3,3e-3}
HUBERT_LRS=${HUBERT_LRS:-1e-3,3e-3,1e-2}
W2V2_LRS=${W2V2_LRS:-3e-4,1e-3,3e-3,1e-2}  # 3e-4 added: both sides peaked at 1e-3, the low edge of the first grid
TASKS=${TASKS:-"keywords digits"}
MODELS=${MODELS:-"hubert wav2vec2"}
W2V2_STEPS=${W2V2_STEPS:-2000}  # the recipe's; 48 with base's loss weights was its earlier default
HUBERT_STEPS=${HUBERT_STEPS:-2000}
# BEST-RQ and data2vec: update counts that give about HuBERT's pretraining wall time (~90 s here; measured
# 0.09 s and 0.25 s per update on this CPU with another job running)
BEST_RQ_STEPS=${BEST_RQ_STEPS:-1000}
DATA2VEC_STEPS=${DATA2VEC_STEPS:-360}
OTHER_LRS=${OTHER_LRS:-1e-3,3e-3,1e-2}  # BEST-RQ and data2vec keyword grid (HuBERT's)
CTC_STEPS=${CTC_STEPS:-3000}
LABELS=${LABELS:-1.0}  # label budgets (fractions of the training clips), e.g. 0.1,1.0
DIGITS_MODELS=${DIGITS_MODELS:-hubert}
mkdir -p "$OUT"
TIMES="$OUT/timings.txt"
echo "# $(date -u) $*" >> "$TIMES"
stage() {  # stage NAME CMD...: run and record wall time
  local name=$1; shift
  local start=$SECONDS
  echo "== $name: $*"
  "$@"
  echo "$name $((SECONDS - start)) s" | tee -a "$TIMES"
}

[ -f "$DATA/README.md" ] && [ -z "${REGENERATE:-}" ] && echo "== data: reusing $DATA (REGENERATE=1 to rebuild)" \
  || stage data python benchmarks/payoff/make_speech_dataset.py --out "$DATA"

pretrain_hubert_iter1() {
  stage pretrain-hubert python run_pretrain.py recipes/hubert/tiny-cpu-iter1.yaml --train_dir "$DATA/unlabeled" \
    --max_steps "$HUBERT_STEPS" --output_dir "$OUT/pretrain-hubert" --overwrite_output_dir true
}

for model in $MODELS; do
  if [ -f "$OUT/pretrain-$model/train_results.json" ] && [ -z "${REPRETRAIN:-}" ]; then
    echo "== pretrain-$model: reusing $OUT/pretrain-$model (REPRETRAIN=1 to pretrain again)"; continue
  fi
  case $model in
    wav2vec2) stage pretrain-wav2vec2 python run_pretrain.py recipes/wav2vec2/tiny-cpu.yaml --train_dir "$DATA/unlabeled" \
                --max_steps "$W2V2_STEPS" --output_dir "$OUT/pretrain-wav2vec2" --overwrite_output_dir true ;;
    hubert) pretrain_hubert_iter1 ;;
    hubert2) [ -f "$OUT/pretrain-hubert/train_results.json" ] || pretrain_hubert_iter1  # its targets come from iteration 1
             stage pretrain-hubert2 python run_pretrain.py recipes/hubert/tiny-cpu-iter2.yaml --train_dir "$DATA/unlabeled" \
               --label_model "$OUT/pretrain-hubert" --max_steps "$HUBERT_STEPS" --output_dir "$OUT/pretrain-hubert2" \
               --overwrite_output_dir true ;;
    best_rq) stage pretrain-best_rq python run_pretrain.py recipes/best_rq/tiny-cpu.yaml --train_dir "$DATA/unlabeled" \
               --max_steps "$BEST_RQ_STEPS" --output_dir "$OUT/pretrain-best_rq" --overwrite_output_dir true ;;
    data2vec) stage pretrain-data2vec python run_pretrain.py recipes/data2vec/speech-tiny-cpu.yaml --train_dir "$DATA/unlabeled" \
                --max_steps "$DATA2VEC_STEPS" --output_dir "$OUT/pretrain-data2vec" --overwrite_output_dir true ;;
    *) echo "unknown model $model (wav2vec2, hubert, hubert2, best_rq, data2vec)"; exit 2 ;;
  esac
done

for task in $TASKS; do
  models=$MODELS
  [ "$task" = digits ] && models=$(for m in $DIGITS_MODELS; do [[ " $MODELS " == *" $m "* ]] && echo "$m"; done; true)
  for model in $models; do
    seeds=$SEEDS; lrs=$HUBERT_LRS; [ "$model" = wav2vec2 ] && lrs=$W2V2_LRS
    case $model in best_rq|data2vec) lrs=$OTHER_LRS ;; esac
    case $task in
      keywords) args=(recipes/finetune/audio-classification-tiny-cpu.yaml) ;;
      digits) args=(recipes/finetune/speech-recognition-ctc-tiny-cpu.yaml --max_steps "$CTC_STEPS" --eval_steps 0)
              seeds=$CTC_SEEDS; lrs=$CTC_LRS ;;
      *) echo "unknown task $task (keywords, digits)"; exit 2 ;;
    esac
    stage "payoff-$task-$model" python run_finetune.py "${args[@]}" --model_name_or_path "$OUT/pretrain-$model" \
      --train_dir "$DATA/$task/train" --validation_dir "$DATA/$task/validation" --test_dir "$DATA/$task/test" \
      --validation_split_percentage 0 --freeze_feature_encoder false \
      --compare_with_scratch true --seeds "$seeds" --learning_rates "$lrs" --label_fractions "$LABELS" \
      --output_dir "$OUT/payoff-$task-$model" --resume_from_checkpoint latest  # keeps a rerun's finished runs, adds the rest
  done
done
echo "total $SECONDS s" | tee -a "$TIMES"
for f in "$OUT"/payoff-*/payoff.md; do [ -f "$f" ] || continue; echo; echo "## $f"; sed -n '/^| label budget | train/,/^$/p' "$f"; done
