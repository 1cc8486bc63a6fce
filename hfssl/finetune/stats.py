"""Statistics of the payoff report, pure Python (no scipy): per-cell mean and sample standard deviation,
the paired per-seed gain with a Student-t interval, and the learning-rate choice on validation scores.

A "run" here is one fine-tuning result: a dict with at least `seed`, `learning_rate` and the metric
keys `finetune(...)` returns (`eval_*` on the validation split, `test_*` on the test split).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from hfssl.errors import ConfigError


# ------------------------------------------------------------------ Student t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use the symmetry on the other
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t > 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of t_cdf (bisection to 1e-12): t_quantile(0.975, 9) = 2.262."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 2.0
    while t_cdf(hi, df) < p:  # df = 1, p = 0.9995 needs hi ~ 637
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------ summaries
def summarize(values: Sequence[float]) -> dict:
    """mean, sample standard deviation (ddof=1; None below 2 values) and n."""
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n}


def paired_gain(pretrained: dict, scratch: dict, higher_is_better: bool, confidence: float = 0.95) -> dict:
    """Gain of pretraining from per-seed scores {seed: value} of the two sides.

    Only seeds present on both sides are paired; difference = pretrained - scratch (scratch - pretrained
    when lower is better, e.g. WER), so > 0 means pretraining helped. The interval is mean +- t * sd / sqrt(n)
    with t the (1 + confidence) / 2 quantile of Student's t with n - 1 degrees of freedom; None for n < 2.
    """
    seeds = sorted(s for s in pretrained if s in scratch and pretrained[s] is not None and scratch[s] is not None)
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (pretrained[s] - scratch[s]) for s in seeds]
    out = {**summarize(diffs), "seeds": seeds, "differences": diffs, "confidence": confidence, "t": None, "ci": None}
    if out["n"] >= 2:
        t = t_quantile(0.5 + confidence / 2.0, out["n"] - 1)
        half = t * out["sd"] / math.sqrt(out["n"])
        out.update(t=t, ci=[out["mean"] - half, out["mean"] + half])
    return out


# ------------------------------------------------------------------ learning-rate choice
ROUND_DIGITS = 9  # validation means closer than 1e-9 are a tie (no validation split has 1e9 examples)


def select_learning_rate(runs: Iterable[dict], metric: str, higher_is_better: bool) -> tuple[float, list[dict]]:
    """The learning rate of one (init, label budget) cell, chosen on validation only.

    runs: every grid run of the cell (all learning rates x all seeds). Reads only `learning_rate`,
    `eval_<metric>` and `eval_loss`: test scores are never looked at. Picks the best mean validation
    metric over seeds; ties go to the lower mean validation loss, then to the smaller learning rate.
    A one-point grid needs no validation. Returns (chosen, [{learning_rate, validation_mean,
    validation_loss_mean, n}] in grid order).
    """
    key = f"eval_{metric}"
    by_lr: dict[float, list[dict]] = {}
    for r in runs:
        by_lr.setdefault(float(r["learning_rate"]), []).append(r)
    if not by_lr:
        raise ValueError("no runs to choose a learning rate from")
    rows = []
    for lr in sorted(by_lr):
        scores = [r.get(key) for r in by_lr[lr]]
        losses = [r.get("eval_loss") for r in by_lr[lr]]
        if len(by_lr) > 1 and any(v is None for v in scores):
            raise ConfigError(f"A learning-rate grid is chosen on the validation split, and a run at learning rate {lr:g} has "
                              f"no {key}: give validation data (validation_file/validation_dir or validation_split_percentage "
                              f"> 0), or use a one-point grid. The test split is never used to choose.")
        rows.append({"learning_rate": lr, "validation_mean": _mean(scores), "validation_loss_mean": _mean(losses), "n": len(scores)})
    if len(rows) == 1:
        return rows[0]["learning_rate"], rows

    def rank(row: dict) -> tuple:
        m, loss = row["validation_mean"], row["validation_loss_mean"]
        # Rounded: the same number of correct answers summed in another seed order can differ in the last bit
        # (0.92 + 0.94 + 0.9267 vs 0.92 + 0.9333 + 0.9333), which must stay a tie for the loss to break.
        m = -math.inf if m is None or math.isnan(m) else round(m if higher_is_better else -m, ROUND_DIGITS)  # NaN: worst
        loss = math.inf if loss is None or math.isnan(loss) else loss
        return (-m, loss, row["learning_rate"])

    return min(rows, key=rank)["learning_rate"], rows


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)
