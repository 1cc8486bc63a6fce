"""Bookkeeping of loss terms and metrics across micro-batches and processes (used by the loop and by
evaluation). A loss term is a named SUM over its own targets; see `hfssl.objectives.base`."""

from __future__ import annotations

import torch
from accelerate.utils import gather_object


def as_terms(x) -> dict:
    """A loss sum or target count, for one term (a scalar) or several ({term: value}), as {term: value}."""
    return dict(x) if isinstance(x, dict) else {"loss": x}


def term_of(metric: str, terms: list[str]) -> str:
    """The loss term whose target count weights `metric`: its name prefix, else the first term."""
    return next((t for t in terms if metric.startswith(t + "_")), terms[0])


def accumulate(sums: dict, outputs: dict, counts: dict) -> None:
    """Add one micro-batch to the running sums: 'loss/<term>' sums, and each metric (a per-target mean)
    times its term's target count, so that dividing by the global count gives the global mean.

    outputs: the model's dict; counts: this micro-batch's {term: targets}, in the collator's term order."""
    names = list(counts)
    for k, v in as_terms(outputs["loss_sum"]).items():
        sums[f"loss/{k}"] = sums.get(f"loss/{k}", 0.0) + v.detach().double()
    for k, v in outputs.items():
        if k != "loss_sum":
            sums[k] = sums.get(k, 0.0) + v.detach().double() * counts[term_of(k, names)]


def reduce_sums(accelerator, sums: dict) -> dict[str, float]:
    """Sum every running sum over processes in one all-reduce (one sync), as Python floats."""
    names = sorted(sums)
    total = accelerator.reduce(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=accelerator.device)
                                            for k in names]), "sum").tolist()
    return dict(zip(names, total))


def agreed(names: list[str], world: int) -> list[str]:
    """The union of every process's names, in first-seen order (the same on every process)."""
    lists = gather_object([names]) if world > 1 else [names]
    return list(dict.fromkeys(k for ks in lists for k in ks))


def per_target(sums: dict[str, float], counts: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Global sums -> the loss (sum over terms of term sum / term count), per-term losses when there are
    several terms, and every metric divided by its term's count. `counts` in term order."""
    terms = list(counts)
    losses = {k: sums[f"loss/{k}"] / max(counts[k], 1.0) for k in terms}
    out = {f"{prefix}loss": sum(losses.values())}
    if len(terms) > 1:
        out.update({f"{prefix}loss_{k}": v for k, v in losses.items()})
    for k, v in sorted(sums.items()):
        if not k.startswith("loss/"):
            out[f"{prefix}{k}"] = v / max(counts[term_of(k, terms)], 1.0)
    return out
