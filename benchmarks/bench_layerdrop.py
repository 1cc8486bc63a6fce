"""What constant-graph LayerDrop costs (hfssl.layerdrop) against transformers' skipping LayerDrop.

A wav2vec 2.0 encoder (12 layers x 256, 4 heads, FFN 1024; small conv encoder) trains on random audio
(batch 4 x 4 s = 4 x 199 frames) with AdamW: forward, backward, step. Three settings, the same
batches and seeds: transformers skipping with layerdrop p, hfssl's constant graph with p, and no
LayerDrop. The settings take turns (round-robin) so that machine load drifts hit all of them alike;
each reports the median and the fastest seconds per update (the
minimum is the better estimate on a shared, busy machine).

    OMP_NUM_THREADS=1 python benchmarks/bench_layerdrop.py --layerdrop 0.1 --updates 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from hfssl.layerdrop import constant_graph_layerdrop


def build(layerdrop: float, constant: bool) -> Wav2Vec2Model:
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024,
                            conv_dim=[64] * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
                            layerdrop=layerdrop, apply_spec_augment=False)
    model = Wav2Vec2Model(config).train()
    if constant:
        constant_graph_layerdrop(model)
    return model


def time_updates(model: Wav2Vec2Model, updates: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    audio = torch.randn(updates, 4, 64000, generator=torch.Generator().manual_seed(1))
    times = []
    for step in range(updates):
        torch.manual_seed(step)  # the loop reseeds per micro-batch: the same layers drop in both LayerDrops
        start = time.perf_counter()
        loss = model(audio[step]).last_hidden_state.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layerdrop", type=float, default=0.1)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    settings = {f"skipping (transformers), layerdrop {args.layerdrop}": (args.layerdrop, False),
                f"constant graph (hfssl), layerdrop {args.layerdrop}": (args.layerdrop, True),
                "no LayerDrop": (0.0, False)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, (p, constant) in settings.items():
            times[name] += time_updates(build(p, constant), args.updates)[2:]  # the first updates warm up
    result = {name: {"median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4), "updates": len(t)}
              for name, t in times.items()}
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
