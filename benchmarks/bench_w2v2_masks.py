"""Benchmark: wav2vec 2.0 span masks + negatives, hfssl (torch, vectorized) vs transformers (numpy).

One batch = time-span mask for B utterances of T frames, then K negatives per frame, ending in torch
tensors ready for ``Wav2Vec2ForPreTraining(mask_time_indices=..., sampled_negative_indices=...)``:

* transformers: ``_compute_mask_indices`` + ``_sample_negative_indices`` (numpy, loop over the
  batch), then numpy -> torch: ``torch.from_numpy`` for the bool mask (zero copy) and ``.long()``
  for the int32 negatives (the model indexes with int64, so the cast is paid either way). This is the
  cheapest faithful conversion; transformers' example collator uses ``torch.tensor(...)``, which
  copies both and would only make the reference slower.
* hfssl: ``compute_span_mask`` + ``sample_negatives``, seeded with a ``torch.Generator``, then the
  per-utterance indices shifted to the model's flattened ``b * T + t`` int64 layout (one add). The
  results of 2026-11-23 in benchmarks/results were measured with a former ``flat=True`` option of
  ``sample_negatives`` that wrote this layout directly.

Both run in the same process, interleaved repetition by repetition so that machine noise hits both
alike. Default is one torch thread: masks are made in DataLoader workers, where torch runs with one
thread, and the numpy reference is single-threaded. Prints a table and writes JSON.

    python -m benchmarks.bench_w2v2_masks [--repeats 300] [--threads 1] [--output PATH]

(from the repository root, or as a script once hfssl is installed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from hfssl.masking.spans import compute_span_mask, sample_negatives, span_mask_stats


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=780, help="T, frames per utterance (~15.6 s of audio)")
    parser.add_argument("--mask-prob", type=float, default=0.65)
    parser.add_argument("--mask-length", type=int, default=10)
    parser.add_argument("--min-masks", type=int, default=2)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument(
        "--variable-lengths",
        action="store_true",
        help="real lengths spread evenly over [T/2, T] instead of all T (padding path)",
    )
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/w2v2_masks_<date>.json)",
    )
    return parser.parse_args(argv)


def _reference(shape, lengths_attention, args):
    mask = _compute_mask_indices(
        shape, args.mask_prob, args.mask_length, attention_mask=lengths_attention, min_masks=args.min_masks
    )
    t1 = time.perf_counter_ns()
    negatives = _sample_negative_indices(shape, args.negatives, mask_time_indices=mask)
    mask_t = torch.from_numpy(mask)
    negatives_t = torch.from_numpy(negatives).long()
    return mask_t, negatives_t, t1


def _ours(lengths, generator, args):
    mask = compute_span_mask(
        lengths, args.frames, args.mask_prob, args.mask_length, min_masks=args.min_masks, generator=generator
    )
    t1 = time.perf_counter_ns()
    negatives = sample_negatives(mask, args.negatives, generator=generator)
    negatives += (torch.arange(mask.shape[0]) * mask.shape[1])[:, None, None]  # (B, T, K) -> b * T + t
    return mask, negatives, t1


def _summary(ns: list[int]) -> dict[str, float]:
    ms = sorted(x / 1e6 for x in ns)
    return {
        "min_ms": ms[0],
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "p10_ms": ms[len(ms) // 10],
        "p90_ms": ms[(9 * len(ms)) // 10],
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    shape = (args.batch, args.frames)
    if args.variable_lengths:
        lengths = torch.linspace(args.frames // 2, args.frames, args.batch).long()
    else:
        lengths = torch.full((args.batch,), args.frames, dtype=torch.long)
    attention = (torch.arange(args.frames)[None, :] < lengths[:, None]).long()

    # The load average is recorded because other processes on a shared machine inflate medians
    # (mins are more robust); both sides are interleaved so they see the same conditions.
    load_before = os.getloadavg()
    timings = {name: {"mask": [], "negatives": [], "total": []} for name in ("transformers", "hfssl")}
    masks = {"transformers": [], "hfssl": []}
    for rep in range(args.warmup + args.repeats):
        # Alternate which one goes first so neither always runs on a warm cache.
        order = ("transformers", "hfssl") if rep % 2 == 0 else ("hfssl", "transformers")
        for name in order:
            t0 = time.perf_counter_ns()
            if name == "transformers":
                mask, negatives, t1 = _reference(shape, attention, args)
            else:
                mask, negatives, t1 = _ours(lengths, generator, args)
            t2 = time.perf_counter_ns()
            if rep >= args.warmup:
                timings[name]["mask"].append(t1 - t0)
                timings[name]["negatives"].append(t2 - t1)
                timings[name]["total"].append(t2 - t0)
                masks[name].append(mask)
            assert negatives.dtype == torch.long and negatives.shape == (*shape, args.negatives)

    results = {name: {part: _summary(ns) for part, ns in parts.items()} for name, parts in timings.items()}
    speedup = {
        stat: {
            part: results["transformers"][part][f"{stat}_ms"] / results["hfssl"][part][f"{stat}_ms"]
            for part in ("mask", "negatives", "total")
        }
        for stat in ("median", "min")
    }
    stats = {
        name: span_mask_stats(torch.cat(ms), lengths.repeat(len(ms))) for name, ms in masks.items()
    }

    print(
        f"w2v2 masks + negatives: batch {args.batch} x {args.frames} frames, mask_prob {args.mask_prob}, "
        f"mask_length {args.mask_length}, {args.negatives} negatives, {args.repeats} repeats, "
        f"torch threads {args.threads}, {'variable' if args.variable_lengths else 'full'} lengths, "
        f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    columns = f"{'transformers':>12} {'hfssl':>8} {'speedup':>8}"
    print(f"{'ms/batch':<10} {'median':^30}   {'min':^30}")
    print(f"{'stage':<10} {columns}   {columns}")
    for part in ("mask", "negatives", "total"):
        ref, ours = results["transformers"][part], results["hfssl"][part]
        print(
            f"{part:<10} {ref['median_ms']:>12.3f} {ours['median_ms']:>8.3f} {speedup['median'][part]:>7.1f}x"
            f"   {ref['min_ms']:>12.3f} {ours['min_ms']:>8.3f} {speedup['min'][part]:>7.1f}x"
        )
    for name, s in stats.items():
        print(
            f"{name:<13} masked fraction {s['masked_fraction']:.4f}, "
            f"mean span {s['mean_span_length']:.2f} frames"
        )

    record = {
        "benchmark": "w2v2_masks",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": os.getloadavg(),
        },
        "reference_conversion": "torch.from_numpy(mask); torch.from_numpy(negatives).long()",
        "results": results,
        "speedup": speedup,
        "mask_stats": stats,
    }
    default_name = f"w2v2_masks_{datetime.date.today().isoformat()}.json"
    output = args.output or Path(__file__).parent / "results" / default_name
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")
    return record


if __name__ == "__main__":
    main()
