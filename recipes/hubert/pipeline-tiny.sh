#!/usr/bin/env bash
# HuBERT's two iterations on the tiny CPU recipes, one command each (targets + training):
#   1. k-means on MFCCs -> masked prediction           (recipes/hubert/tiny-cpu-iter1.yaml)
#   2. k-means on layer features of model 1 -> again   (recipes/hubert/tiny-cpu-iter2.yaml)
# Extra arguments go to both stages, e.g. --train_dir my_audio/ --overwrite_output_dir true.
#
#   bash recipes/hubert/pipeline-tiny.sh
#   OUT=outputs/my-hubert bash recipes/hubert/pipeline-tiny.sh --train_dir my_audio/
#   LAUNCH="accelerate launch" bash recipes/hubert/pipeline-tiny.sh     # several processes/GPUs
set -euo pipefail
# One intra-op thread: these models are tiny, and on a busy CPU torch's multi-threaded kernels mostly wait
# (measured on 2 busy cores: ~25 s per iteration with 1 thread, 2-3 min with 2).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/tiny-hubert}
LAUNCH=${LAUNCH:-python}
$LAUNCH run_pretrain.py recipes/hubert/tiny-cpu-iter1.yaml --output_dir "$OUT-iter1" "$@"
$LAUNCH run_pretrain.py recipes/hubert/tiny-cpu-iter2.yaml --label_model "$OUT-iter1" --output_dir "$OUT-iter2" "$@"
echo "iteration 1: $OUT-iter1"
echo "iteration 2: $OUT-iter2"
