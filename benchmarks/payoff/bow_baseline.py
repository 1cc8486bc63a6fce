#!/usr/bin/env python
"""A bag-of-words reference for the Debian topic set: TF-IDF over lower-cased words + a linear softmax classifier.

Not a competitor in the payoff report (no pretraining, no transformer): it says how much of the topic signal the
labeled examples alone carry when every word counts, which is the bar a tiny encoder from random init falls short of.

    python benchmarks/payoff/bow_baseline.py            # prints test accuracy for each L2 weight

Trains on all labeled training examples (train.csv, including the 10% the payoff holds out for validation) with full-batch
Adam for 300 steps, and reports the test accuracy for each weight-decay value (none is chosen on test).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> tuple[list[str], list[str]]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def main() -> None:
    torch.manual_seed(0)
    train_x, train_y = load("train.csv")
    test_x, test_y = load("test.csv")
    labels = sorted(set(train_y))
    vocab = {w: i for i, w in enumerate(sorted({w for t in train_x for w in words(t)}))}  # (V,) words seen in training

    def counts(texts: list[str]) -> torch.Tensor:  # (N, V) word counts; unseen words are dropped
        x = torch.zeros(len(texts), len(vocab))
        for i, t in enumerate(texts):
            for w, c in Counter(words(t)).items():
                if w in vocab:
                    x[i, vocab[w]] = c
        return x

    xtr, xte = counts(train_x), counts(test_x)
    idf = torch.log((1 + len(train_x)) / (1 + (xtr > 0).sum(0))) + 1  # (V,) smoothed inverse document frequency

    def tfidf(x: torch.Tensor) -> torch.Tensor:  # (N, V), rows L2-normalized
        x = torch.log1p(x) * idf
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-9)

    ytr = torch.tensor([labels.index(y) for y in train_y])
    yte = torch.tensor([labels.index(y) for y in test_y])
    ftr, fte = tfidf(xtr), tfidf(xte)
    print(f"{len(train_x)} training / {len(test_x)} test descriptions, {len(labels)} topics, {len(vocab)} words")
    for weight_decay in (1e-4, 1e-3, 1e-2):
        w = torch.zeros(len(vocab), len(labels), requires_grad=True)
        b = torch.zeros(len(labels), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ftr @ w + b, ytr) + weight_decay * (w ** 2).sum()
            loss.backward()
            opt.step()
        accuracy = ((fte @ w + b).argmax(1) == yte).float().mean().item()
        print(f"L2 weight {weight_decay:g}: test accuracy {accuracy:.1%}")


if __name__ == "__main__":
    main()
