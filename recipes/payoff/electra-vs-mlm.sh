#!/usr/bin/env bash
# MLM vs. ELECTRA vs. data2vec (text) at equal pretraining wall-clock, on the offline Debian topic set
# (README "Did pretraining pay off?"). The three pretrain at once, one thread each, on the same machine, so
# they share its conditions; the update counts make the runs take about the same time (an ELECTRA step,
# generator + discriminator, measured 1.33x the MLM step of recipes/mlm/small-cpu-modernbert.yaml on a
# 2-core CPU; data2vec's student + EMA teacher about the same). All three are 4 layers x 256. Then each
# model goes through the payoff report against its own architecture from random init: 3 seeds, a
# learning-rate grid per side chosen on validation.
# Usage: recipes/payoff/electra-vs-mlm.sh [OUT] [MLM_STEPS] [ELECTRA_STEPS] [DATA2VEC_STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/electra-vs-mlm}
mkdir -p "$OUT"
MLM_STEPS=${2:-450}
ELECTRA_STEPS=${3:-340}
DATA2VEC_STEPS=${4:-340}
CORPUS=benchmarks/payoff/data/corpus.txt.gz
export OMP_NUM_THREADS=1
common=(--train_file "$CORPUS" --eval_steps 0 --save_steps 0 --overwrite_output_dir true)
/usr/bin/time -f "mlm pretraining: %e s" python run_pretrain.py recipes/mlm/small-cpu-modernbert.yaml "${common[@]}" \
    --max_steps "$MLM_STEPS" --output_dir "$OUT/mlm" > "$OUT.mlm.log" 2>&1 &
/usr/bin/time -f "electra pretraining: %e s" python run_pretrain.py recipes/electra/tiny-cpu.yaml "${common[@]}" \
    --max_steps "$ELECTRA_STEPS" --output_dir "$OUT/electra" > "$OUT.electra.log" 2>&1 &
/usr/bin/time -f "data2vec pretraining: %e s" python run_pretrain.py recipes/data2vec/text-tiny-cpu.yaml "${common[@]}" \
    --config_overrides hidden_size=256,num_hidden_layers=4,num_attention_heads=4,intermediate_size=1024,layer_norm_eps=1e-5 --max_steps "$DATA2VEC_STEPS" \
    --output_dir "$OUT/data2vec" > "$OUT.data2vec.log" 2>&1 &
wait
tail -n 1 "$OUT.mlm.log" "$OUT.electra.log" "$OUT.data2vec.log"
for model in mlm electra data2vec; do
    python run_finetune.py recipes/finetune/debian-topics-payoff.yaml --model_name_or_path "$OUT/$model" \
        --label_fractions 1.0 --seeds 3 --learning_rates 3e-4,1e-3 --scratch_learning_rates 3e-4,1e-3 \
        --output_dir "$OUT/payoff-$model"
done
