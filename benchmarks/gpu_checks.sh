#!/usr/bin/env bash
# Every GPU check of docs/performance.md in one call, most important first. Each step gets what is left of
# BUDGET seconds (a step that cannot fit is skipped and says so), so one slow compile cannot cost the rest.
#
#   OUT=gpu-checks BUDGET=560 bash benchmarks/gpu_checks.sh          # on one GPU
#   OUT=/tmp/c BUDGET=900 BENCH_ARGS=--tiny PROFILE_PRESET=tiny bash benchmarks/gpu_checks.sh   # on a CPU, tiny sizes
#   ONLY='wav2vec|syncs' ... bash benchmarks/gpu_checks.sh           # only the steps whose name matches
#
# Wheels in $WHEELS (default .whl/, if any) are installed to /tmp/site first and put ahead of the machine's packages, so
# the GPU runs the Python stack this repository is tested with; if that import fails, the machine's own is used.
# The lent H200 machines have torch 2.11 (cu130), an older transformers/accelerate and no datasets/soundfile/evaluate;
# the 2026-12-04 run carried these (Python 3.12 wheels, ~30 MB; fetched here with pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
# --platform manylinux2014_x86_64 --platform any -d .whl ...):
#   transformers==5.25.0 accelerate==1.16.0 tokenizers==0.23.3 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2
#   hf-xet==1.8.0 kernels==0.19.1 tomlkit==0.15.3 click==8.5.1 fsspec==2026.9.0 truststore anyio==4.16.0 h11==0.16.0
#   idna==3.20 typing_extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 soundfile==0.14.0
#   cffi==2.1.1 pycparser==3.12 evaluate==0.4.6 jiwer==4.0.0 rapidfuzz==3.14.6
# `ONLY=FSDP` runs the distributed checks instead (benchmarks/check_gpu_distributed.py, ~10 min: a call of its own).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-gpu-checks}; ONLY=${ONLY:-.}; BUDGET=${BUDGET:-560}; BENCH_ARGS=${BENCH_ARGS:-}; LONG_SECONDS=${LONG_SECONDS:-120}
PY=${PYTHON:-python3}
# Results are written outside $OUT and packed into $OUT/gpu-checks.tgz after every step (checkpoints and weights
# left out), so $OUT holds two files whenever the call is cut short: a device call returns at most 8 files of 16 MiB.
R=$(mktemp -d "${TMPDIR:-/tmp}/gpu-checks.XXXXXX")/r
mkdir -p "$R" "$OUT"; LOG="$OUT/log.txt"; START=$SECONDS
pack() { tar -C "$(dirname "$R")" -czf "$OUT/gpu-checks.tgz" --exclude='checkpoint-*' --exclude='*.safetensors' --exclude='*.bin' r; }
left() { echo $(( BUDGET - (SECONDS - START) )); }
step() {  # step NAME NEEDS_SECONDS MAX_SECONDS command...
  local name=$1 need=$2 max=$3 l; shift 3; l=$(left)
  [[ "$name" =~ $ONLY ]] || return 0
  if (( l < need )); then echo "== skipped $name: ${l}s of the budget left, it needs ${need}s" | tee -a "$LOG"; return; fi
  (( max > l )) && max=$l
  echo "== $name (limit ${max}s) at $((SECONDS - START))s" | tee -a "$LOG"
  timeout -k 10 "$max" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} at $((SECONDS - START))s" | tee -a "$LOG"
  pack
}

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  if PYTHONPATH=/tmp/site $PY -c "import transformers, accelerate, datasets, soundfile, hfssl.trainer" 2>>"$LOG"; then
    export PYTHONPATH=/tmp/site
  else
    echo "== the carried wheels do not import; using the machine's packages" | tee -a "$LOG"
  fi
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  $PY -c "import sys, torch, transformers, accelerate; print(sys.version.split()[0], torch.__version__, torch.version.cuda, transformers.__version__, accelerate.__version__)"
  nproc; } 2>&1 | tee -a "$LOG"

B="$PY benchmarks/bench_gpu.py $BENCH_ARGS"
step "attention and packing tests on CUDA" 30 90 $PY -m pytest -q -rs -p no:cacheprovider tests/unit/test_attention.py tests/unit/test_packing.py -k "cuda or flash"
step "BERT-base MLM" 120 260 $B --workloads mlm --variants hf_trainer,hf_trainer_compile,hfssl,hfssl_compile --output "$R/bench_mlm.json"
step "wav2vec 2.0 base" 40 110 $B --workloads w2v --variants hf_loop,hfssl --output "$R/bench_w2v.json"
step "wav2vec 2.0 base, ${LONG_SECONDS}s in bf16" $(( LONG_SECONDS + 40 )) $(( LONG_SECONDS + 90 )) $B --workloads w2v_long --long_seconds "$LONG_SECONDS" --output "$R/w2v_long.json"
# hfssl_padded is hfssl's CUDA default for line-by-line text without flash-attn (hfssl/attention.py); packed is the
# other layout: both beside the stock Trainer in one run, so both ratios come out.
step "line-by-line text" 40 130 $B --workloads mlm_varlen --variants hf_trainer,hfssl,hfssl_padded --output "$R/bench_varlen.json"
step "ablations" 40 240 $B --workloads mlm,mlm_varlen,w2v --variants mlm:hfssl_eager,mlm_varlen:hfssl_rows8,w2v:hfssl_compile --output "$R/bench_more.json"
step "host syncs per update" 40 90 $B --workloads syncs --output "$R/syncs.json"
P="$PY benchmarks/profile_step.py --preset ${PROFILE_PRESET:-gpu} --steps 8"
step "profile: line-by-line text, packed" 40 90 $P --workload mlm_varlen --output "$R/profile_mlm_varlen.json"
step "profile: BERT-base MLM, compiled" 60 150 $P --workload mlm --compile --output "$R/profile_mlm_compile.json"
step "profile: wav2vec 2.0 base" 40 90 $P --workload w2v --output "$R/profile_w2v.json"
[[ "FSDP2 checks" =~ $ONLY ]] && [[ "$ONLY" != . ]] && \
  step "FSDP2 checks" 300 590 $PY benchmarks/check_gpu_distributed.py --out "$R/distributed" --steps "${FSDP_STEPS:-300}" ${FSDP_ARGS:-}
echo "== done at $((SECONDS - START))s" | tee -a "$LOG"
pack && rm -rf "$(dirname "$R")"
