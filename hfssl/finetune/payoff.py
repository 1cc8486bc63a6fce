"""Did pretraining pay off? Fine-tune the pretrained model and the same architecture from random init
under identical settings, over several seeds and a learning-rate grid per side, for one or several
label budgets, and report the test metric with honest statistics.

    python run_finetune.py RECIPE --model_name_or_path PRETRAINED --compare_with_scratch true \\
        --label_fractions 0.1,1.0 --seeds 3 --learning_rates 1e-4,3e-4,1e-3
    python -m hfssl.finetune.payoff RECIPE --model_name_or_path PRETRAINED --label_fractions 0.1,1.0

Protocol, per label budget and per side (pretrained, scratch):
- Every learning rate of the side's grid (`learning_rates` / `scratch_learning_rates`; a single
  `learning_rate` / `scratch_learning_rate` is a one-point grid) runs on every seed (`seeds`).
- The learning rate is chosen on the validation split only: best mean `eval_<metric>` over the seeds
  (ties: lower mean eval loss, then the smaller rate). The reported numbers are the test metric of the
  runs at that rate: no extra runs, and test scores never influence the choice. A multi-point grid
  without a validation split is refused (ConfigError). payoff.md flags a side whose chosen rate is an end of
  its grid: its best rate may lie outside, and an under-tuned side biases the gain.
- A seed sets everything seeded for both sides (head init, data order, dropout, the held-out validation
  split, the label-budget subsample); the pretrained and scratch runs with the same seed are a pair.
- Per cell: mean and sample standard deviation (ddof=1) over seeds, n. Gain: the paired per-seed
  differences (pretrained - scratch, or scratch - pretrained for WER, so > 0 means pretraining helped),
  their mean and a 95% Student-t interval (none for one seed). See `hfssl.finetune.stats`.

Cost: label budgets x 2 sides x seeds x grid points fine-tuning runs (2 x 3 x 2 x 3 = 36 for the
Debian recipe). Writes output_dir/payoff.json (every run incl. the grid, the chosen rates, the per-cell
statistics), payoff.md (tables), payoff.png (metric vs label budget, error bars = sd) and
payoff_runs.jsonl (one line per finished run, written as they finish); each run keeps its full output
in output_dir/<pretrained|scratch>-<fraction>/seed<seed>-lr<rate>/.

An interrupted payoff continues with `--resume_from_checkpoint latest`: the runs payoff_runs.jsonl records with
exactly the same settings (every fine-tuning setting, and the hashes of the model's config.json and weights) are
taken from it instead of being trained again; the others run. Change a setting, or pretrain the model again in
place, and the runs it touches are trained again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from hfssl.errors import ConfigError, guarded
from hfssl.finetune.stats import paired_gain, select_learning_rate, summarize

logger = logging.getLogger(__name__)

# Primary metric per task and whether higher is better.
PRIMARY = {"text-classification": ("accuracy", True), "audio-classification": ("accuracy", True),
           "speech-recognition-ctc": ("wer", False)}
INITS = ("pretrained", "scratch")


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


def run_dir_name(init: str, fraction: float, seed: int, lr: float) -> str:
    return f"{init}-{fraction:g}/seed{seed}-lr{lr:g}"


# Left out of a run's fingerprint: where and how it writes, and the payoff's own plan (its seed, label budget and rate
# are the run's own fields), so adding a seed or a grid point reuses the runs already finished.
_NOT_SETTINGS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "report_to", "push_to_hub",
                 "seeds", "label_fractions", "scratch_learning_rate", "learning_rates", "scratch_learning_rates")


def run_fingerprint(sub) -> str:
    """sha1 of one run's settings and of the files of the model it starts from (config.json, weights), so a
    recorded run is reused only for the same run of the same model."""
    from hfssl.checkpointing import file_hash

    settings = {k: v for k, v in dataclasses.asdict(sub).items() if k not in _NOT_SETTINGS}
    source = Path(sub.model_name_or_path or sub.config_name or "")
    files = {}
    if source.is_dir():
        for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            if (source / name).is_file() and (name == "config.json" or sub.model_name_or_path):
                files[name] = file_hash(source / name)
    blob = json.dumps({"settings": settings, "files": files}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def _finished_runs(log: Path) -> dict[str, dict]:
    """fingerprint -> record of the runs an earlier invocation finished (payoff_runs.jsonl)."""
    done = {}
    if log.is_file():
        for n, line in enumerate(log.read_text().splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:  # a line cut short by a kill: that run is trained again
                logger.warning("%s line %d is incomplete; its run will be trained again.", log, n)
                continue
            if "fingerprint" in record:
                done[record["fingerprint"]] = record
    return done


def _compare(cfg, out: Path, finetune) -> None:
    metric, _ = PRIMARY[cfg.task]
    grids = {"pretrained": cfg.pretrained_learning_rates, "scratch": cfg.scratch_learning_rate_grid}
    plan = [(fraction, seed, init, lr) for fraction in cfg.fractions for seed in cfg.seed_list
            for init in INITS for lr in grids[init]]
    logger.info("Payoff: %d runs (label budgets %s, seeds %s, learning rates pretrained %s / scratch %s)", len(plan),
                cfg.fractions, cfg.seed_list, grids["pretrained"], grids["scratch"])
    out.mkdir(parents=True, exist_ok=True)
    log = out / "payoff_runs.jsonl"
    finished = _finished_runs(log) if cfg.resume_from_checkpoint else {}
    # Resuming keeps every recorded run (also those this plan does not use), without a line a kill cut short.
    log.write_text("".join(json.dumps(r, default=str) + "\n" for r in finished.values()))
    records, reused = [], 0
    for i, (fraction, seed, init, lr) in enumerate(plan, 1):
        sub = dataclasses.replace(
            cfg, output_dir=str(out / run_dir_name(init, fraction, seed, lr)), label_fraction=fraction, seed=seed,
            learning_rate=lr, compare_with_scratch=False, learning_rates=None, scratch_learning_rates=None,
            model_name_or_path=cfg.model_name_or_path if init == "pretrained" else None,
            config_name=None if init == "pretrained" else cfg.model_name_or_path,
            overwrite_output_dir=True, resume_from_checkpoint=None, push_to_hub=False)
        fingerprint = run_fingerprint(sub)
        if fingerprint in finished:
            record, reused = finished[fingerprint], reused + 1
            logger.info("Payoff run %d/%d: %s, label budget %g, seed %d, lr %g: finished earlier with the same settings, "
                        "taken from %s", i, len(plan), init, fraction, seed, lr, log)
            records.append(record)
            continue
        logger.info("Payoff run %d/%d: %s, label budget %g, seed %d, lr %g -> %s", i, len(plan), init, fraction, seed, lr, sub.output_dir)
        results = finetune(sub)
        if results is None:  # not the main process
            continue
        if len(grids[init]) > 1 and results.get(f"eval_{metric}") is None:
            raise ConfigError(f"{'learning_rates' if init == 'pretrained' else 'scratch_learning_rates'}: the grid is chosen on "
                              f"the validation split, and this data has none (no eval_{metric}). Give validation data "
                              f"(validation_file/validation_dir, or validation_split_percentage > 0) or use one learning rate.")
        record = {"init": init, "label_fraction": fraction, "seed": seed, "learning_rate": lr, "output_dir": sub.output_dir,
                  "fingerprint": fingerprint, **results}
        records.append(record)
        with open(log, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
    if reused:
        logger.info("Payoff: %d of %d runs taken from the earlier invocation (resume_from_checkpoint), %d trained now.",
                    reused, len(plan), len(records) - reused)
    if records:
        report = write_report(out, cfg.task, records, source=cfg.model_name_or_path)
        print("\n" + report["markdown"])
        print(f"payoff report written to: {out.resolve()}")


def summarize_runs(task: str, records: list[dict]) -> dict:
    """Per-cell statistics from the runs' records (pure: no files). See the module docstring for the protocol.

    records: {init, label_fraction, seed, learning_rate, eval_<metric>, eval_loss, test_<metric>, train_samples, ...}.
    """
    metric, higher = PRIMARY[task]
    prefix = "test" if any(r.get(f"test_{metric}") is not None for r in records) else "eval"
    key = f"{prefix}_{metric}"
    table = []
    for fraction in sorted({r["label_fraction"] for r in records}):
        row: dict = {"label_fraction": fraction}
        per_seed = {}
        sizes = set()
        for init in INITS:
            runs = [r for r in records if r["init"] == init and r["label_fraction"] == fraction]
            if not runs:
                row[init], per_seed[init] = None, {}
                continue
            lr, grid = select_learning_rate(runs, metric, higher)
            chosen = sorted((r for r in runs if float(r["learning_rate"]) == lr), key=lambda r: r["seed"])
            per_seed[init] = {r["seed"]: r.get(key) for r in chosen}
            values = [v for v in per_seed[init].values() if v is not None]
            row[init] = {**summarize(values), "learning_rate": lr, "seeds": list(per_seed[init]), "values": list(per_seed[init].values()),
                         "learning_rate_grid": grid, "grid_edge": grid_edge(lr, [g["learning_rate"] for g in grid])}
            sizes |= {r.get("train_samples") for r in chosen}
        row["train_samples"] = sizes.pop() if len(sizes) == 1 else sorted(s for s in sizes if s is not None) or None
        row["gain"] = paired_gain(per_seed["pretrained"], per_seed["scratch"], higher)
        table.append(row)
    grids = {init: sorted({float(r["learning_rate"]) for r in records if r["init"] == init}) for init in INITS}
    return {"task": task, "metric": key, "validation_metric": f"eval_{metric}", "higher_is_better": higher,
            "seeds": sorted({r["seed"] for r in records}), "learning_rate_grids": grids, "table": table}


def grid_edge(chosen: float, grid: list[float]) -> str | None:
    """'lowest' or 'highest' when validation chose an end of a grid of two or more rates, else None.

    At an end the side's best rate may lie outside the grid, and a side whose optimum is cut off is
    under-tuned. On the Debian topics, random init scored best on test at the top of {3e-4, 1e-3, 3e-3}
    with each of four tokenizers, and fell to 20-31% at 1e-2, so there the top of the grid was near it.
    """
    if len(grid) < 2:
        return None
    return "lowest" if chosen == min(grid) else "highest" if chosen == max(grid) else None


def write_report(out: Path, task: str, records: list[dict], source: str = "") -> dict:
    """payoff.json + payoff.md + payoff.png from the runs' records; returns the summary (with 'markdown')."""
    summary = {**summarize_runs(task, records), "pretrained_model": source}
    markdown = _markdown(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "payoff.json").write_text(json.dumps({**summary, "runs": records}, indent=1, default=str))
    (out / "payoff.md").write_text(markdown)
    _plot(out / "payoff.png", summary["table"], summary["metric"], task)
    return {**summary, "runs": records, "markdown": markdown}


def _num(v, signed: bool = False) -> str:
    return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _markdown(s: dict) -> str:
    key, grids = s["metric"], s["learning_rate_grids"]
    grid_text = " / ".join(f"{init} {{{', '.join(f'{lr:g}' for lr in grids[init])}}}" for init in INITS)
    lines = [f"# Did pretraining pay off? ({s['task']})", "",
             f"Pretrained: `{s['pretrained_model']}`. Scratch: same architecture, random init, identical settings except the "
             f"learning rate, chosen separately for each side.",
             f"Metric: {key} ({'higher' if s['higher_is_better'] else 'lower'} is better): mean ± sample standard deviation "
             f"over seeds. Gain: mean of the paired per-seed differences (> 0: pretraining helped); 95% CI: Student t "
             f"with n - 1 degrees of freedom (n/a for one seed).",
             f"Learning rate per cell: best mean {s['validation_metric']} over the seeds on the validation split, from "
             f"{grid_text}; test scores are never used to choose.", ""]
    if key.startswith("eval_") and any(len(g) > 1 for g in grids.values()):
        lines += ["No test split: the table reports the validation metric the learning rate was chosen on (optimistic).", ""]
    lines += ["| label budget | train examples | pretrained (mean ± sd) | scratch (mean ± sd) | gain | 95% CI of gain | lr pre / scratch | seeds |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in s["table"]:
        cells = []
        for init in INITS:
            side = row[init]
            cells.append("n/a" if side is None or side["mean"] is None else f"{_num(side['mean'])} ± {_num(side['sd'])}")
        g = row["gain"]
        ci = "n/a" if g["ci"] is None else f"[{_num(g['ci'][0], True)}, {_num(g['ci'][1], True)}]"
        lrs = " / ".join("n/a" if row[i] is None else f"{row[i]['learning_rate']:g}" for i in INITS)
        lines.append(f"| {row['label_fraction']:g} | {row['train_samples']} | {cells[0]} | {cells[1]} | {_num(g['mean'], True)} | "
                     f"{ci} | {lrs} | {g['n']} ({', '.join(str(x) for x in g['seeds'])}) |")
    edges = [(row["label_fraction"], init, row[init]) for row in s["table"] for init in INITS if (row[init] or {}).get("grid_edge")]
    if edges:
        lines += [""] + [f"Note: at label budget {f:g} the {init} side chose its {side['grid_edge']} rate ({side['learning_rate']:g}): its "
                         f"best rate may lie outside the grid; extend `{'learning_rates' if init == 'pretrained' else 'scratch_learning_rates'}` "
                         f"{'down' if side['grid_edge'] == 'lowest' else 'up'} to rule out an under-tuned side." for f, init, side in edges]
    lines += ["", "Learning-rate selection (mean over seeds on the validation split; * = chosen):", "",
              f"| label budget | init | learning rate | {s['validation_metric']} | eval_loss | runs |", "|---:|---|---:|---:|---:|---:|"]
    for row in s["table"]:
        for init in INITS:
            for g in (row[init] or {}).get("learning_rate_grid", []):
                star = "*" if g["learning_rate"] == row[init]["learning_rate"] else ""
                lines.append(f"| {row['label_fraction']:g} | {init} | {g['learning_rate']:g}{star} | {_num(g['validation_mean'])} | "
                             f"{_num(g['validation_loss_mean'])} | {g['n']} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, table: list[dict], key: str, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [row["label_fraction"] for row in table]
    log = len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 4
    width = (max(xs) - min(xs)) or 1.0
    nan = float("nan")
    for name, style, side_of in (("pretrained", "o-", -1), ("scratch", "s--", 1)):
        sides = [row[name] or {} for row in table]
        ys = [nan if side.get("mean") is None else side["mean"] for side in sides]
        err = [0.0 if side.get("sd") is None else side["sd"] for side in sides]  # one seed: no bar
        n = max((side.get("n", 0) for side in sides), default=0)
        # the two sides' bars side by side, not on top of each other
        shifted = [x * (1 + 0.02 * side_of) if log else x + 0.01 * side_of * width for x in xs]
        ax.errorbar(shifted, ys, yerr=err, fmt=style, capsize=4, label=f"{name} (n={n}, ± sd)")
    if log:
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
