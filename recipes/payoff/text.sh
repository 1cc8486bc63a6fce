#!/usr/bin/env bash
# Reproduce the README text payoff table from scratch on a 2-core CPU, offline:
#   1. README command 1's model: `python run_pretrain.py` (recipes/mlm/tiny-cpu.yaml on its built-in corpus,
#      the unlabeled Debian descriptions) -> outputs/payoff-text/tiny/model
#   2. the small CPU recipe: recipes/mlm/small-cpu-modernbert.yaml on the same corpus
#      -> outputs/payoff-text/small/model
#   3. each fine-tuned on the Debian topic set (recipes/finetune/debian-topics-payoff.yaml) next to
#      the same architecture from random init, every side over the learning-rate grid LRS, each
#      side's rate chosen on mean VALIDATION accuracy, SEEDS fine-tuning seeds; JSON reports in
#      docs/payoff/text-tiny.json and docs/payoff/text-small.json (mean, sd, gain, 95% interval).
#
#   bash recipes/payoff/text.sh                 # everything (run time: see RUN TIME below)
#   SEEDS=42,43 LRS=1e-3,3e-3 bash recipes/payoff/text.sh   # quicker, fewer runs
#
# RUN TIME on an idle 2-core CPU with AMX, from measured parts (2026-12-03 and 2026-12-05), not timed end to end:
# README command 1 453 s (3600 updates, bf16, compiled); its 18 fine-tunings (3 rates x 3 seeds x 2 sides, two at a
# time) about 14 min; the small recipe 884-907 s (6000 updates, vocabulary 16,384; measured on a slower machine than
# the 453 s); its 18 fine-tunings about 14 min: about 50 minutes in all. Without
# native bf16 the pretrainings run in fp32, about twice as long (about 68 minutes). On a busy machine it takes longer.
# Finished runs are skipped, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-42,43,44}
LRS=${LRS:-3e-4,1e-3,3e-3}  # the grid of recipes/finetune/debian-topics-payoff.yaml
JOBS=${JOBS:-2}                 # fine-tunings in parallel, one thread each
WORK=${WORK:-outputs/payoff-text}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A="python benchmarks/payoff/ablate.py"

OMP_NUM_THREADS=2 $A pretrain tiny --work "$WORK" -- recipes/mlm/tiny-cpu.yaml
$A finetune tiny --work "$WORK" --lrs "$LRS" --seeds "$SEEDS" --jobs "$JOBS" >/dev/null
$A report tiny --work "$WORK" --json docs/payoff/text-tiny.json

OMP_NUM_THREADS=2 $A pretrain small --work "$WORK" -- recipes/mlm/small-cpu-modernbert.yaml
$A finetune small --work "$WORK" --lrs "$LRS" --seeds "$SEEDS" --jobs "$JOBS" >/dev/null
$A report small --work "$WORK" --json docs/payoff/text-small.json
