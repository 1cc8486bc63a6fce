"""Training-curve PNGs, written at the end of every run."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training_curves(log_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Plot loss, learning rate and every other logged metric (train and eval) from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = Path(log_path)
    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    skip = {"step", "epoch", "num_targets", "grad_norm", "time"} | {k for r in train for k in r if k.endswith("_per_second")}
    keys = sorted({k for r in train for k, v in r.items() if isinstance(v, (int, float)) and k not in skip})
    eval_keys = sorted({k for r in evals for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "eval_targets")})
    panels = keys + [k for k in eval_keys if k.removeprefix("eval_") not in keys]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        if key in keys:
            pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*pts), label="train", lw=1) if pts else None
        ek = key if key.startswith("eval_") else f"eval_{key}"
        epts = [(r["step"], r[ek]) for r in evals if isinstance(r.get(ek), (int, float))]
        if epts:
            ax.plot(*zip(*epts), "o-", label="eval", ms=3)
        ax.set_title(key.removeprefix("eval_"))
        ax.set_xlabel("update")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return Path(png_path)
