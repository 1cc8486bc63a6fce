"""Benchmark: one wav2vec 2.0 pretraining step, hfssl's objective module vs stock Wav2Vec2ForPreTraining.

Same model config and weights, same batch (audio, masks, negatives), same precision, same optimizer:

* stock: ``Wav2Vec2ForPreTraining(input_values, mask_time_indices=..., sampled_negative_indices=...)``
  with masks and negatives from transformers' ``_compute_mask_indices`` / ``_sample_negative_indices``;
  ``loss / num_masked`` backward; AdamW step. (The stock loss has no feature penalty and no feature
  gradient scaling; it quantizes and scores every frame.)
* hfssl: ``hfssl.objectives.wav2vec2.Wav2Vec2Pretraining`` on the same weights and the same masks and
  negatives (per-utterance form), with the base recipe's extras (feature penalty, gradient scale 0.1):
  ``loss_sum / num_masked`` backward; AdamW step.

Masks/negatives are drawn once, outside the timed region, for both (their cost is measured by
``bench_w2v2_masks.py``). The two loops are interleaved round by round so machine noise hits both.
Throughput is audio-seconds per second (batch audio / step time). Prints a table and writes JSON.

    python benchmarks/bench_w2v2_step.py                         # CPU, small config
    python benchmarks/bench_w2v2_step.py --device cuda --bf16 --base --batch 8 --seconds 15.6
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining

SMALL = dict(conv_dim=(128,) * 7, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16, codevector_dim=128, proj_codevector_dim=128)
BASE = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False, layerdrop=0.0)  # Wav2Vec2Config() is base


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (both sides)")
    p.add_argument("--base", action="store_true", help="wav2vec2-base size (95M) instead of the small CPU config")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0, help="audio per utterance")
    p.add_argument("--negatives", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = Wav2Vec2Config(**(BASE if args.base else {**BASE, **SMALL}), mask_time_prob=0.65, mask_time_length=10,
                            num_negatives=args.negatives, hidden_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.1,
                            feat_quantizer_dropout=0.1)
    stock = Wav2Vec2ForPreTraining(config).to(device).train()
    ours = Wav2Vec2Pretraining(copy.deepcopy(stock), feature_grad_scale=0.1, feature_penalty_weight=10.0).to(device).train()

    samples = int(args.seconds * 16000)
    audio = torch.randn(args.batch, samples, device=device)
    frames = int(stock._get_feat_extract_output_lengths(samples))
    mask_np = _compute_mask_indices((args.batch, frames), 0.65, 10, min_masks=2)
    neg_np = _sample_negative_indices((args.batch, frames), args.negatives, mask_np)
    mask = torch.from_numpy(mask_np).to(device)
    neg_flat = torch.from_numpy(neg_np).long().to(device)
    neg_local = neg_flat - (torch.arange(args.batch, device=device) * frames)[:, None, None]
    n_masked = float(mask.sum())

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    opt_stock = torch.optim.AdamW(stock.parameters(), 1e-4, fused=device.type == "cuda")
    opt_ours = torch.optim.AdamW(ours.parameters(), 1e-4, fused=device.type == "cuda")

    def step_stock():
        with autocast():
            out = stock(audio, mask_time_indices=mask, sampled_negative_indices=neg_flat)
        (out.loss / n_masked).backward()
        opt_stock.step()
        opt_stock.zero_grad(set_to_none=True)

    def step_ours():
        with autocast():
            out = ours(audio, mask_time_indices=mask, sampled_negative_indices=neg_local)
        (out["loss_sum"] / n_masked).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {"stock": [], "hfssl": []}
    for fn in (step_stock, step_ours):
        for _ in range(args.warmup):
            fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.rounds):
        for name, fn in (("stock", step_stock), ("hfssl", step_ours)):
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t) / args.steps)
    audio_seconds = args.batch * args.seconds
    result = {name: {"ms_per_step_median": 1000 * statistics.median(ts), "ms_per_step_min": 1000 * min(ts),
                     "audio_seconds_per_second": audio_seconds / statistics.median(ts)} for name, ts in times.items()}
    result["ratio_hfssl_over_stock"] = result["hfssl"]["audio_seconds_per_second"] / result["stock"]["audio_seconds_per_second"]
    meta = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "config": "wav2vec2-base" if args.base else "small", "parameters_M": sum(p.numel() for p in stock.parameters()) / 1e6,
            "batch": args.batch, "seconds_per_utterance": args.seconds, "frames": frames, "masked_frames": int(n_masked),
            "negatives": args.negatives, "bf16": args.bf16, "rounds": args.rounds, "steps_per_round": args.steps}
    out = {"meta": meta, "results": result}

    print(f"wav2vec2 pretraining step, {meta['config']} ({meta['parameters_M']:.1f}M), {args.batch} x {args.seconds} s, "
          f"{frames} frames, {args.negatives} negatives, {'bf16' if args.bf16 else 'fp32'}, {device.type}")
    print(f"{'':8s} {'ms/step':>10s} {'audio-s/s':>10s}")
    for name in ("stock", "hfssl"):
        r = result[name]
        print(f"{name:8s} {r['ms_per_step_median']:10.1f} {r['audio_seconds_per_second']:10.1f}")
    print(f"ratio hfssl/stock: {result['ratio_hfssl_over_stock']:.2f}x")
    path = Path(args.output) if args.output else Path(__file__).resolve().parent / "results" / f"w2v2_step_{meta['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
