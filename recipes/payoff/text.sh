#!/usr/bin/env bash
# Reproduce the README text payoff table from scratch on a 2-core CPU, offline:
#   1. README command 1's model: `python run_pretrain.py` (recipes/mlm/tiny-cpu.yaml, built-in
#      corpus of Python standard-library docstrings) -> outputs/payoff-text/tiny/model
#   2. the small CPU recipe: recipes/mlm/small-cpu-modernbert.yaml on the unlabeled Debian corpus
#      (benchmarks/payoff/data/corpus.txt.gz) -> outputs/payoff-text/small/model
#   3. each fine-tuned on the Debian topic set (recipes/finetune/debian-topics-payoff.yaml) next to
#      the same architecture from random init, every side over the learning-rate grid LRS, each
#      side's rate chosen on mean VALIDATION accuracy, SEEDS fine-tuning seeds; JSON reports in
#      docs/payoff/text-tiny.json and docs/payoff/text-small.json (mean, sd, gain, 95% interval).
#
#   bash recipes/payoff/text.sh                 # everything (run time: see RUN TIME below)
#   SEEDS=1,2 LRS=3e-4,1e-3 bash recipes/payoff/text.sh   # quicker, fewer runs
#
# RUN TIME on an idle 2-core CPU: about 60-65 minutes, ESTIMATED from measured parts, not timed end
# to end: README command 1 ~3 min (measured 168 s on an idle 2-core CPU, two threads), the small recipe
# ~11 min (4x its updates; measured 34 min on one thread beside 4-5 other jobs), and 2 x 24 fine-tunings (4 rates x 3 seeds x 2 sides) of ~84 s each
# (measured at load ~1), two at a time. On a busy machine it takes several times longer
# (docs/payoff/ablations.md: every part was run there at load 4-12).
# Finished runs are skipped, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-1,2,3}
LRS=${LRS:-1e-4,3e-4,1e-3,3e-3}
JOBS=${JOBS:-2}                 # fine-tunings in parallel, one thread each
WORK=${WORK:-outputs/payoff-text}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A="python benchmarks/payoff/ablate.py"

OMP_NUM_THREADS=2 $A pretrain tiny --work "$WORK" -- recipes/mlm/tiny-cpu.yaml
$A finetune tiny --work "$WORK" --lrs "$LRS" --seeds "$SEEDS" --jobs "$JOBS" >/dev/null
$A report tiny --work "$WORK" --json docs/payoff/text-tiny.json

OMP_NUM_THREADS=2 $A pretrain small --work "$WORK" -- recipes/mlm/small-cpu-modernbert.yaml \
    --train_file benchmarks/payoff/data/corpus.txt.gz
$A finetune small --work "$WORK" --lrs "$LRS" --seeds "$SEEDS" --jobs "$JOBS" >/dev/null
$A report small --work "$WORK" --json docs/payoff/text-small.json
