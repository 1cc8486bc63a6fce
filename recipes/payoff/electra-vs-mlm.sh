#!/usr/bin/env bash
# MLM vs. ELECTRA at equal pretraining wall-clock on the offline Debian topic set (README "Did pretraining
# pay off?"), both on the same pre-LN ModernBERT-style encoder (4 x 256, mean pooling) and the built-in Debian
# corpus. The runs pretrain one after the other on the idle machine (two threads each), each timed; the ELECTRA
# runs reuse the MLM run's tokenizer, so all have the same random-init twin. Then each model goes through the
# payoff report: 3 seeds, a learning-rate grid per side chosen on validation.
#
# Default (bf16 and compiled where the CPU has AMX, eager attention, as README command 1): MLM = README command 1
# (3600 updates) and the ELECTRA recipe (3600 updates, gradient-disentangled embeddings), plus ELECTRA with the
# paper's tied embeddings (ELECTRA_TIED=1, default on). Measured (2026-12-04, idle 2-core AMX CPU): MLM 598 s,
# ELECTRA 605 s, ELECTRA tied 591 s (an ELECTRA update costs about what an MLM update does here); fine-tuning
# 27 runs, about 25 min two at a time.
#
# FP32=1 reproduces the earlier fp32 table: MLM = the small recipe at 2400 updates, ELECTRA at 1750 updates with tied
# embeddings (an fp32 ELECTRA update measured about 1.35x an MLM update then). Measured (2026-12-03): MLM 553 s,
# ELECTRA 556 s. DATA2VEC=1 (with FP32=1) adds data2vec text (recipes/payoff/text-objectives/data2vec-text-postln.yaml at 4 x 256,
# post-LN RoBERTa layout, the MLM run's tokenizer; DATA2VEC_STEPS updates, default 1370: measured 521 s idle, within
# 6% of the MLM run's wall-clock; 1750 updates took 753 s) and data2vec text on the MLM and ELECTRA encoder
# (recipes/data2vec/text-tiny-cpu.yaml, DATA2VEC_MB_STEPS updates, default 2200: measured 641 s idle,
# 16% more than the MLM run: 60 updates calibrated 0.234 s each, evaluations and checkpoints of the full run made
# it 0.29).
# DATA2VEC=1 without FP32 adds data2vec text on the same encoder with the same speed settings
# (recipes/data2vec/text-tiny-cpu.yaml, bf16 and compiled; DATA2VEC_MB_STEPS, default 4300: measured
# 653 s idle, 9% more than the MLM run, at the peak rate of then, DATA2VEC_LR=1e-3; the recipe's 3e-4 since 2026-12-05).
# Usage: [FP32=1] [DATA2VEC=1] recipes/payoff/electra-vs-mlm.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/electra-vs-mlm}
mkdir -p "$OUT"
common=(--overwrite_output_dir true)
models="mlm electra"
if [ "${FP32:-0}" = 1 ]; then
    MLM_STEPS=${MLM_STEPS:-2400}
    ELECTRA_STEPS=${ELECTRA_STEPS:-1750}
    DATA2VEC_STEPS=${DATA2VEC_STEPS:-1370}
    DATA2VEC_MB_STEPS=${DATA2VEC_MB_STEPS:-2200}
    fp32=(--mixed_precision no --torch_compile false)  # the MLM and ELECTRA recipes say auto: bf16 and compiled on AMX CPUs
    # --vocab_size 8192: the small recipe's vocabulary then (16,384 since 2026-12-05)
    /usr/bin/time -f "mlm pretraining: %e s" python run_pretrain.py recipes/mlm/small-cpu-modernbert.yaml "${common[@]}" \
        "${fp32[@]}" --attn_implementation none --vocab_size 8192 --eval_steps 600 --max_steps "$MLM_STEPS" --output_dir "$OUT/mlm" > "$OUT.mlm.log" 2>&1
    /usr/bin/time -f "electra pretraining: %e s" python run_pretrain.py recipes/electra/tiny-cpu.yaml "${common[@]}" \
        "${fp32[@]}" --attn_implementation none --embedding_sharing tied --tokenizer_name "$OUT/mlm" --max_steps "$ELECTRA_STEPS" \
        --output_dir "$OUT/electra" > "$OUT.electra.log" 2>&1
    if [ "${DATA2VEC:-0}" = 1 ]; then
        /usr/bin/time -f "data2vec pretraining: %e s" python run_pretrain.py recipes/payoff/text-objectives/data2vec-text-postln.yaml "${common[@]}" \
            --builtin_corpus debian-descriptions --tokenizer_name "$OUT/mlm" --per_device_train_batch_size 16 \
            --config_overrides hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024,layer_norm_eps=1e-5 \
            --max_steps "$DATA2VEC_STEPS" --output_dir "$OUT/data2vec" > "$OUT.data2vec.log" 2>&1
        # the data2vec recipe as it was then: peak rate 1e-3, fp32, not compiled (it is bf16, compiled, 3e-4 since 2026-12-05)
        /usr/bin/time -f "data2vec-modernbert pretraining: %e s" python run_pretrain.py recipes/data2vec/text-tiny-cpu.yaml \
            "${common[@]}" "${fp32[@]}" --learning_rate 1e-3 --attn_implementation none --eval_steps 100 --save_steps 100 \
            --tokenizer_name "$OUT/mlm" --max_steps "$DATA2VEC_MB_STEPS" --output_dir "$OUT/data2vec-modernbert" \
            > "$OUT.data2vec-modernbert.log" 2>&1
        models="$models data2vec data2vec-modernbert"
    fi
else
    /usr/bin/time -f "mlm pretraining: %e s" python run_pretrain.py "${common[@]}" --output_dir "$OUT/mlm" > "$OUT.mlm.log" 2>&1
    /usr/bin/time -f "electra pretraining: %e s" python run_pretrain.py recipes/electra/tiny-cpu.yaml "${common[@]}" \
        --tokenizer_name "$OUT/mlm" --output_dir "$OUT/electra" > "$OUT.electra.log" 2>&1
    if [ "${ELECTRA_TIED:-1}" = 1 ]; then
        /usr/bin/time -f "electra-tied pretraining: %e s" python run_pretrain.py recipes/electra/tiny-cpu.yaml \
            "${common[@]}" --embedding_sharing tied --tokenizer_name "$OUT/mlm" --output_dir "$OUT/electra-tied" \
            > "$OUT.electra-tied.log" 2>&1
        models="$models electra-tied"
    fi
    if [ "${DATA2VEC:-0}" = 1 ]; then  # the data2vec recipe (README command 1's speed settings); DATA2VEC_LR=1e-3: the README row
        /usr/bin/time -f "data2vec-modernbert pretraining: %e s" python run_pretrain.py recipes/data2vec/text-tiny-cpu.yaml \
            "${common[@]}" --learning_rate "${DATA2VEC_LR:-3e-4}" --tokenizer_name "$OUT/mlm" \
            --max_steps "${DATA2VEC_MB_STEPS:-4300}" --output_dir "$OUT/data2vec-modernbert" > "$OUT.data2vec-modernbert.log" 2>&1
        models="$models data2vec-modernbert"
    fi
fi
tail -n 1 "$OUT".*.log
for model in $models; do
    python run_finetune.py recipes/finetune/debian-topics-payoff.yaml --model_name_or_path "$OUT/$model" \
        --label_fractions 1.0 --output_dir "$OUT/payoff-$model" --resume_from_checkpoint latest
done
