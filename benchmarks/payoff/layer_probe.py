#!/usr/bin/env python
"""How much topic information each layer of a text encoder holds: a linear probe per layer on the Debian topic set.

For every hidden state a model returns (index 0 = the embeddings, then one per layer), the states are mean-pooled over
the real tokens, standardized with the training set's statistics, and a softmax classifier (L2 weight 1e-2, L-BFGS, 200
iterations) is fitted on the labeled training examples; the line gives its test accuracy per layer. The encoder stays
frozen. Used to see why a pretrained model fine-tunes well or badly (docs/payoff/ablations.md, "ELECTRA with
gradient-disentangled embeddings"): a layer below the random-init encoder's score kept less of the topic than random
weights do.

    python benchmarks/payoff/layer_probe.py outputs/tiny-mlm outputs/tiny-electra
    python benchmarks/payoff/layer_probe.py outputs/tiny-mlm:random     # the same architecture, random init (seed 0)
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from bow_baseline import load


def pooled_states(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 64) -> torch.Tensor:
    """(layers + 1, N, H): each hidden state mean-pooled over the real tokens of each text."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            states = model(**batch, output_hidden_states=True).hidden_states  # (layers + 1) x (B, T, H)
            real = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            out.append(torch.stack([(h * real).sum(1) / real.sum(1) for h in states]))
    return torch.cat(out, 1)


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   n_classes: int, l2: float = 1e-2) -> float:
    """Test accuracy of a softmax classifier fitted on standardized (N, H) features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((test_x @ weight + bias).argmax(-1) == test_y).float().mean().item()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders; append ':random' for the same architecture from random init")
    args = ap.parse_args(argv)
    train_texts, train_labels = load("train.csv")
    test_texts, test_labels = load("test.csv")
    classes = sorted(set(train_labels))
    train_y = torch.tensor([classes.index(y) for y in train_labels])
    test_y = torch.tensor([classes.index(y) for y in test_labels])
    for spec in args.models:
        path, _, mode = spec.partition(":")
        tokenizer = AutoTokenizer.from_pretrained(path)
        if mode == "random":
            torch.manual_seed(0)
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        else:
            model = AutoModel.from_pretrained(path)
        model.eval()
        train_x, test_x = pooled_states(model, tokenizer, train_texts), pooled_states(model, tokenizer, test_texts)
        scores = [probe_accuracy(train_x[i], train_y, test_x[i], test_y, len(classes)) for i in range(train_x.shape[0])]
        print(spec, " ".join(f"L{i} {100 * s:.1f}%" for i, s in enumerate(scores)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
