"""Did pretraining pay off? Fine-tune the pretrained model and the same architecture from random
init under identical settings (data, budget, steps, seed; only the learning rate may differ, via
scratch_learning_rate) for one or several label budgets, and report the metric side by side.

    python run_finetune.py RECIPE --model_name_or_path PRETRAINED --compare_with_scratch true --label_fractions 0.1,1.0
    python -m hfssl.finetune.payoff RECIPE --model_name_or_path PRETRAINED --label_fractions 0.1,1.0

Writes output_dir/payoff.json, payoff.md (table) and payoff.png (metric vs label budget); each run
keeps its full output in output_dir/<pretrained|scratch>-<fraction>/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from hfssl.errors import ConfigError, guarded

logger = logging.getLogger(__name__)

# Primary metric per task and whether higher is better.
PRIMARY = {"text-classification": ("accuracy", True), "audio-classification": ("accuracy", True),
           "speech-recognition-ctc": ("wer", False)}


@guarded
def run_payoff(cfg) -> int:
    from hfssl.finetune.pipeline import finetune
    from hfssl.pretrain import setup_logging
    from hfssl.run_dir import close_run_dir, open_run_dir

    setup_logging()
    out = Path(cfg.output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # `finetune` ends the process group after each run (accelerator.end_training()), so a second
        # run in the same processes cannot synchronize.
        raise ConfigError("compare_with_scratch runs several trainings in one process: launch it as a single process "
                          "(python run_finetune.py ...), or run the pretrained and --config_name runs separately.")
    run_dir = open_run_dir(cfg)  # the report's folder; each run below locks its own subfolder
    try:
        _compare(cfg, out, finetune)
    finally:
        close_run_dir(run_dir)
    return 0


def _compare(cfg, out: Path, finetune) -> None:
    records = []
    for fraction in cfg.fractions:
        for init in ("pretrained", "scratch"):
            sub = dataclasses.replace(
                cfg, output_dir=str(out / f"{init}-{fraction:g}"), label_fraction=fraction, compare_with_scratch=False,
                model_name_or_path=cfg.model_name_or_path if init == "pretrained" else None,
                config_name=None if init == "pretrained" else cfg.model_name_or_path,
                learning_rate=cfg.learning_rate if init == "pretrained" else (cfg.scratch_learning_rate or cfg.learning_rate),
                overwrite_output_dir=True, resume_from_checkpoint=None, push_to_hub=False)
            logger.info("Payoff run: %s, label budget %g -> %s", init, fraction, sub.output_dir)
            results = finetune(sub)
            if results is None:  # not the main process
                continue
            records.append({"init": init, "label_fraction": fraction, "learning_rate": sub.learning_rate, **results})
    if records:
        report = write_report(out, cfg.task, records, source=cfg.model_name_or_path)
        print("\n" + report["markdown"])
        print(f"payoff report written to: {out.resolve()}")


def write_report(out: Path, task: str, records: list[dict], source: str = "") -> dict:
    """payoff.json + payoff.md + payoff.png from the runs' results; returns the summary."""
    metric, higher = PRIMARY[task]
    prefix = "test" if any(f"test_{metric}" in r for r in records) else "eval"
    key = f"{prefix}_{metric}"
    fractions = sorted({r["label_fraction"] for r in records})
    table = []
    for f in fractions:
        pre = next((r.get(key) for r in records if r["init"] == "pretrained" and r["label_fraction"] == f), None)
        scr = next((r.get(key) for r in records if r["init"] == "scratch" and r["label_fraction"] == f), None)
        gain = None if pre is None or scr is None else (pre - scr if higher else scr - pre)
        n = next((r.get("train_samples") for r in records if r["label_fraction"] == f), None)
        table.append({"label_fraction": f, "train_samples": n, "pretrained": pre, "scratch": scr, "gain": gain})
    lines = [f"# Did pretraining pay off? ({task})", "",
             f"Pretrained: `{source}`. Scratch: same architecture, random init, identical settings.",
             f"Metric: {key} ({'higher' if higher else 'lower'} is better); gain > 0 means pretraining helped.", "",
             "| label budget | train examples | pretrained | scratch | gain |", "|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines += [f"| {row['label_fraction']:g} | {row['train_samples']} | {fmt(row['pretrained'])} | {fmt(row['scratch'])} | {fmt(row['gain'])} |" for row in table]
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"task": task, "metric": key, "higher_is_better": higher, "pretrained_model": source, "table": table, "runs": records}
    (out / "payoff.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "payoff.md").write_text(markdown)
    _plot(out / "payoff.png", table, key, task)
    return {**summary, "markdown": markdown}


def _plot(path: Path, table: list[dict], key: str, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [row["label_fraction"] for row in table]
    for name, style in (("pretrained", "o-"), ("scratch", "s--")):
        ys = [row[name] if row[name] is not None else float("nan") for row in table]
        ax.plot(xs, ys, style, label=name)
    if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 4:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("label budget (fraction of training set)")
    ax.set_ylabel(key)
    ax.set_title(f"{task}: pretrained vs. random init")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    from hfssl.config import parse_or_exit
    from hfssl.finetune.config import FinetuneConfig

    cfg = parse_or_exit([*argv, "--compare_with_scratch", "true"], configs={"finetune": FinetuneConfig}, default_objective="finetune")
    return run_payoff(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
