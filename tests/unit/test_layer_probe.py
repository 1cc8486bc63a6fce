"""benchmarks/payoff/layer_probe.py: the per-layer linear probe scores what the features carry, and its pooling
ignores padding."""

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks" / "payoff"))
from layer_probe import pooled_states, probe_accuracy  # noqa: E402


def test_probe_separates_separable_classes_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.randn(3, 16, generator=g)
    labels = torch.arange(300) % 3
    x = centres[labels] + torch.randn(300, 16, generator=g)
    assert probe_accuracy(x[:200], labels[:200], x[200:], labels[200:], 3) == 1.0
    shuffled = labels[torch.randperm(300, generator=g)]  # labels unrelated to the features
    assert probe_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:], 3) < 0.6


class _Echo(torch.nn.Module):
    """A "model" whose hidden states are the input ids (and twice them): pooling is checkable by hand."""

    def forward(self, input_ids, attention_mask, output_hidden_states=True, **_):
        h = input_ids.float().unsqueeze(-1)  # (B, T, 1)
        return type("Out", (), {"hidden_states": (h, 2 * h)})()


def _tokenizer(texts, **_):
    ids = [[int(w) for w in t.split()] for t in texts]
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([row + [99] * (width - len(row)) for row in ids]),  # 99 = padding, must not count
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])}


def test_pooling_averages_real_tokens_only():
    states = pooled_states(_Echo(), _tokenizer, ["1 2 3", "4"], batch_size=1)
    assert states.shape == (2, 2, 1)
    assert states[0, :, 0].tolist() == pytest.approx([2.0, 4.0]) and states[1, :, 0].tolist() == pytest.approx([4.0, 8.0])
