#!/usr/bin/env python
"""GPU throughput, stock Hugging Face and hfssl side by side in one process: same model config, data,
batch, precision and number of steps.

Workloads (`--workloads`, default all but `w2v_long`):
  mlm         BERT-base MLM, packed 128-token blocks, batch 256: stock `Trainer` + DataCollatorForLanguageModeling,
              `Trainer` + `torch_compile`, hfssl's loop, hfssl's loop + `torch_compile`; ablation: hfssl with
              eager attention (what sdpa buys).
  mlm_varlen  line-by-line text of varying length (lognormal, median 48 tokens, 8..128): stock `Trainer`
              (pads every batch to its longest row, as run_mlm.py --line_by_line), hfssl padding-free;
              ablations: hfssl with padded batches (what packing buys), packed rows rounded up to 8.
  w2v         wav2vec 2.0 base pretraining, 8 x 15.6 s: the stock `Wav2Vec2ForPreTraining` loop (masks and
              negatives from transformers' numpy functions, drawn once outside the loop; their cost per
              batch is reported apart), hfssl's loop (masks and negatives drawn per batch in its collator),
              hfssl + `torch_compile`.
  w2v_long    hfssl's wav2vec 2.0 base loop for `--long_seconds` (default 120) in bf16: non-finite updates,
              codebook perplexity at the start and the end (minimum 1 per group; maximum codes per group).
  mlm_bf16    the `mlm` model in fp32 and bf16 autocast: stock `Trainer` (fp32, bf16, bf16 + compile), hfssl's loop
              (fp32, bf16, bf16 + eager attention, bf16 + eager + compile, the last with the single-tensor AdamW
              instead of the fused one). With `--preset cpu-recipe` (README
              command 1's ModernBERT and batch), what recipes/mlm/tiny-cpu.yaml's `auto` settings buy on a CPU.
  syncs       CUDA only: device-to-host synchronizations per update in hfssl's loop (sync debug mode).

Every hfssl variant is the real `hfssl.trainer.train` with a synthetic-data objective (the loop, its
collators, its model wrappers, its attention default); stock variants are transformers' own classes.
Timing: after `warm` updates, until the last one, with the device synchronized at both ends (hfssl:
the training log's per-update timestamps, written after each update's loss is read back).

Model FLOP utilization (MFU) = model FLOPs per second / peak. Model FLOPs are the same for every variant
of a workload (the reference computation, not what a variant skips): BERT, per token,
6 x (encoder + full MLM head parameters) + 12 x layers x hidden x sequence length (attention scores and
values, forward and backward; for varying lengths, the token-weighted mean length); wav2vec 2.0, per
utterance, 3 x forward (the conv feature encoder, the projection, the convolutional position embedding,
the transformer's matmuls and attention). Peak: the datasheet dense bf16 figure of the GPU (H100/H200 SXM:
989 TFLOP/s) and the one measured here (an 8192^3 bf16 matmul; fp32 2048^3 on CPU; best of three trials).
hfssl skips most of the MLM head's FLOPs (it runs on masked tokens only) and wav2vec 2.0's quantizer and
logits on unmasked frames; model FLOPs still count them, as for every variant, so hfssl's MFU can exceed
what the hardware actually computed (on a CPU, even the measured peak).

    python benchmarks/bench_gpu.py                         # GPU: every workload, ~6 min on an H100
    python benchmarks/bench_gpu.py --workloads w2v_long    # the 2-minute bf16 wav2vec 2.0 run
    python benchmarks/bench_gpu.py --preset cpu            # the same comparisons with small models on a CPU
    python benchmarks/bench_gpu.py --preset cpu-recipe --workloads mlm_bf16   # README command 1's step on a CPU
    python benchmarks/bench_gpu.py --tiny                  # smoke test (tests/unit/test_bench_gpu.py)

Prints a table and writes JSON (GPU name, torch and transformers versions, every figure, ratios).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_gpu_workloads import PRESETS, host_syncs, hfssl_mlm, hfssl_w2v, stock_mlm, stock_w2v, w2v_long  # noqa: E402

DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="gpu (default with CUDA), cpu, cpu-recipe, tiny")
    p.add_argument("--tiny", action="store_true", help="same as --preset tiny (CPU smoke test, seconds)")
    p.add_argument("--workloads", default="mlm,mlm_varlen,w2v", help="comma-separated: mlm, mlm_varlen, w2v, w2v_long, syncs")
    p.add_argument("--variants", default=None, help="comma-separated variants to run, by name (in every workload) or as workload:name (default: all)")
    p.add_argument("--long_seconds", type=float, default=120.0, help="w2v_long: training time")
    p.add_argument("--vocab_size", type=int, default=0, help="the text model's vocabulary (0: the preset's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--output", default=None, help="JSON path (default: $OUT or benchmarks/results, dated)")
    return p.parse_args(argv)


def measured_peak_tflops(device: torch.device) -> float:
    """Dense matmul throughput actually reached here: bf16 8192^3 on CUDA, fp32 2048^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, best = (10 if device.type == "cuda" else 3), float("inf")
    for _ in range(3):  # the best of three: on a shared CPU, other jobs only ever slow a trial down
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> dict:
    import transformers

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": str(device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["datasheet_bf16_tflops"] = next((v for k, v in DATASHEET_TFLOPS.items() if k in info["gpu"]), None)
    else:
        info["load_average"] = os.getloadavg()
    try:
        info["hfssl_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        info["hfssl_commit"] = None
    # The commit alone can mislead: a copied working tree (a lent GPU machine's) may carry newer files than its
    # .git says. This hash of the code that ran identifies it either way.
    code = sorted([*(REPO / "hfssl").rglob("*.py"), *(REPO / "benchmarks").glob("bench_gpu*.py")])
    info["code_sha1"] = hashlib.sha1(b"".join(p.relative_to(REPO).as_posix().encode() + p.read_bytes() for p in code)).hexdigest()[:12]
    try:
        import flash_attn  # noqa: F401

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    return info


RUNNERS = {
    "mlm": [("hf_trainer", lambda p: stock_mlm(p, compile=False, varlen=False)),
            ("hf_trainer_compile", lambda p: stock_mlm(p, compile=True, varlen=False)),
            ("hfssl", lambda p: hfssl_mlm(p, compile=False, varlen=False)),
            ("hfssl_compile", lambda p: hfssl_mlm(p, compile=True, varlen=False)),
            ("hfssl_eager", lambda p: hfssl_mlm(p, compile=False, varlen=False, attention="eager"))],
    # bf16 autocast on any device (on a CPU it pays only with AMX / AVX512-BF16), eager vs sdpa attention, compiled.
    "mlm_bf16": [("hf_trainer_fp32", lambda p: stock_mlm(p, compile=False, varlen=False, precision="no")),
                 ("hf_trainer_bf16", lambda p: stock_mlm(p, compile=False, varlen=False, precision="bf16")),
                 ("hf_trainer_bf16_compile", lambda p: stock_mlm(p, compile=True, varlen=False, precision="bf16")),
                 ("hfssl_fp32", lambda p: hfssl_mlm(p, compile=False, varlen=False, precision="no")),
                 ("hfssl_bf16", lambda p: hfssl_mlm(p, compile=False, varlen=False, precision="bf16")),
                 ("hfssl_bf16_eager", lambda p: hfssl_mlm(p, compile=False, varlen=False, attention="eager", precision="bf16")),
                 ("hfssl_bf16_eager_compile", lambda p: hfssl_mlm(p, compile=True, varlen=False, attention="eager", precision="bf16")),
                 # the same with the single-tensor AdamW hfssl used off CUDA until 2026-12-05 (a CPU has no foreach kernels)
                 ("hfssl_bf16_eager_compile_unfused", lambda p: hfssl_mlm(p, compile=True, varlen=False, attention="eager",
                                                                          precision="bf16", fused_adamw=False))],
    "mlm_varlen": [("hf_trainer", lambda p: stock_mlm(p, compile=False, varlen=True)),
                   ("hfssl", lambda p: hfssl_mlm(p, compile=False, varlen=True)),
                   ("hfssl_padded", lambda p: hfssl_mlm(p, compile=False, varlen=True, packed=False)),
                   # packed rows rounded up to a multiple of 8: does a steady batch shape recover what packing saves?
                   ("hfssl_rows8", lambda p: hfssl_mlm(p, compile=False, varlen=True, rows_multiple_of=8))],
    "w2v": [("hf_loop", lambda p: stock_w2v(p)),
            ("hfssl", lambda p: hfssl_w2v(p, compile=False)),
            ("hfssl_compile", lambda p: hfssl_w2v(p, compile=True))],
    "w2v_long": [("hfssl", lambda p: w2v_long(p, p["long_seconds"]))],
    "syncs": [("hfssl", host_syncs)],
}
STOCK = {"mlm": ("hf_trainer", "hf_trainer_compile"), "mlm_bf16": ("hf_trainer_fp32", "hf_trainer_bf16", "hf_trainer_bf16_compile"),
         "mlm_varlen": ("hf_trainer",), "w2v": ("hf_loop",)}


def add_derived(result: dict, peaks: dict) -> None:
    """MFU against each peak, from the model FLOPs per second the runner reports."""
    flops = result.get("model_tflops_per_s")
    if flops is None:
        return
    for name, peak in peaks.items():
        if peak:
            result[f"mfu_vs_{name}"] = round(flops / peak, 4)


def ratios(results: dict) -> dict:
    """Throughput of each hfssl variant / each stock variant of the same workload (on a CPU also per CPU second)."""
    out = {}
    for workload, stock_names in STOCK.items():
        rows = results.get(workload, {})
        unit = "tokens_per_s" if workload.startswith("mlm") else "audio_s_per_s"
        for ours, r in rows.items():
            for stock in stock_names if ours.startswith("hfssl") else ():
                for key, label in ((unit, ""), (unit.replace("_per_s", "_per_cpu_s"), " (CPU time)")):
                    if key in r and key in rows.get(stock, {}):
                        out[f"{workload}: {ours} / {stock}{label}"] = round(r[key] / rows[stock][key], 3)
    return out


def print_table(results: dict, comparisons: dict) -> None:
    keys = ["tokens_per_s", "audio_s_per_s", "step_ms", "cpu_ms_per_step", "peak_mem_gb", "padding_fraction", "mfu_vs_datasheet",
            "mfu_vs_measured"]
    print(f"\n{'workload':<11} {'variant':<25} " + " ".join(f"{k:>16}" for k in keys))
    for workload, rows in results.items():
        for variant, r in rows.items():
            print(f"{workload:<11} {variant:<25} " + " ".join(f"{_fmt(r.get(k)):>16}" for k in keys))
    for k, v in comparisons.items():
        print(f"  {k}: {v:.2f}x")


def _fmt(v):
    return "-" if v is None else f"{v:,.4g}" if isinstance(v, float) else f"{v:,}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = "tiny" if args.tiny else args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[name]
    if args.vocab_size:
        preset = {**preset, "bert": {**preset["bert"], "vocab_size": args.vocab_size}}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(preset["device"])
    info = {**machine(device), "preset": name, "settings": {k: v for k, v in preset.items() if not isinstance(v, dict)},
            "text_model": preset["bert"]}
    peaks = {"measured": float(f"{measured_peak_tflops(device):.4g}"), "datasheet": info.get("datasheet_bf16_tflops")}
    info["peak_tflops"] = peaks
    print(json.dumps(info), flush=True)
    wanted = set(args.variants.split(",")) if args.variants else None
    path = Path(args.output) if args.output else Path(os.environ.get("OUT") or REPO / "benchmarks" / "results") / \
        f"gpu_bench_{name}_{datetime.date.today().isoformat()}.json"
    results: dict = {}
    report = _write(path, info, results)
    with tempfile.TemporaryDirectory() as scratch:
        preset = {**preset, "scratch": scratch, "long_seconds": args.long_seconds}
        for workload in args.workloads.split(","):
            for variant, run in RUNNERS[workload]:
                if wanted is not None and variant not in wanted and f"{workload}:{variant}" not in wanted:
                    continue
                try:
                    result = run(preset)
                except Exception as e:  # noqa: BLE001  one failing variant must not cost the others their GPU time
                    traceback.print_exc()
                    result = {"error": f"{type(e).__name__}: {e}"[:500]}
                add_derived(result, peaks)
                results.setdefault(workload, {})[variant] = result
                print(workload, variant, json.dumps(result), flush=True)
                report = _write(path, info, results)  # after every variant: a run stopped at a time limit keeps what it measured
    print_table(results, report["ratios"])
    print(f"wrote {path}")
    return report


def _write(path: Path, info: dict, results: dict) -> dict:
    report = {"machine": info, "results": results, "ratios": ratios(results)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=_json_default))
    return report


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x))


if __name__ == "__main__":
    main()
