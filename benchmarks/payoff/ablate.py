#!/usr/bin/env python
"""Pretraining ablations, measured downstream: pretrain one setting, fine-tune it and the same
architecture from random init over a learning-rate grid and several seeds, write the numbers as JSON.

    python benchmarks/payoff/ablate.py pretrain NAME -- [run_pretrain.py arguments]
    python benchmarks/payoff/ablate.py finetune NAME --lrs 1e-4,3e-4,1e-3 --seeds 1,2,3 [--sides pretrained,scratch] [--jobs 2]
    python benchmarks/payoff/ablate.py report NAME [--scratch_of OTHER] [--json docs/payoff/ablations/NAME.json]
    python benchmarks/payoff/ablate.py row NAME [--scratch_of OTHER]      # one markdown table line

Every run goes to WORK/NAME (WORK: --work, default outputs/ablate) and is skipped when its result
file already exists, so a grid can be extended or resumed. Fine-tuning uses the recipe given by
--recipe (default: recipes/finetune/debian-topics-payoff.yaml) with `--compare_with_scratch false`;
the scratch side is `--config_name WORK/NAME/model` (same architecture and tokenizer, random init).

Fairness: each side's learning rate is the one with the best MEAN VALIDATION accuracy over the seeds,
ties to the lower mean validation loss, then the smaller rate (the payoff command's own rule,
`hfssl.finetune.stats.select_learning_rate`; test accuracy is never looked at to choose); the report
then gives that learning rate's test accuracy per seed, mean and sample standard deviation, and the gain
with a 95% paired-t interval (the seed fixes the validation split, label subset and data order, which both
sides share).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hfssl.finetune.stats import select_learning_rate

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = "recipes/finetune/debian-topics-payoff.yaml"
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy needed).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pretrain(work: Path, name: str, args: list[str]) -> dict:
    """Run run_pretrain.py into WORK/NAME/model; record wall time and the final eval metrics."""
    run = work / name
    done = run / "pretrain.json"
    if done.is_file():
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "run_pretrain.py"), *args, "--output_dir", str(run / "model"), "--overwrite_output_dir", "true"]
    start = time.time()
    with open(run / "pretrain.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    if rc != 0:
        raise SystemExit(f"pretraining {name} failed (exit {rc}); see {run / 'pretrain.log'}")
    metrics = json.loads((run / "model" / "train_results.json").read_text())
    record = {"name": name, "args": args, "wall_s": round(wall, 1), "threads": _env()["OMP_NUM_THREADS"],
              **{k: metrics[k] for k in ("steps", "eval_loss", "eval_accuracy", "eval_perplexity") if k in metrics}}
    done.write_text(json.dumps(record, indent=1))
    return record


def finetune_args(model: Path, side: str, lr: float, seed: int, recipe: str, out: Path, resume: bool = False) -> list[str]:
    """run_finetune.py arguments of one run: the pretrained model, or its architecture from random init (scratch)."""
    source = ["--model_name_or_path", str(model)] if side == "pretrained" else ["--model_name_or_path", "none", "--config_name", str(model)]
    return [recipe, *source, "--compare_with_scratch", "false",
            "--learning_rates", "none", "--scratch_learning_rates", "none",  # one run per (side, rate, seed): no grid
            "--learning_rate", str(lr), "--seed", str(seed), "--output_dir", str(out),
            *(["--resume_from_checkpoint", "latest"] if resume else ["--overwrite_output_dir", "true"])]


def _finetune_one(work: Path, name: str, side: str, lr: float, seed: int, recipe: str, extra: list[str]) -> dict:
    run = work / name / "ft" / f"{side}-lr{lr:g}-s{seed}"
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    # A run stopped by a signal leaves its last checkpoint: continue it (exact resume) instead of starting over.
    resume = any((run / "out").glob("checkpoint-*"))
    cmd = [sys.executable, str(ROOT / "run_finetune.py"), *finetune_args(work / name / "model", side, lr, seed, recipe, run / "out", resume), *extra]
    run.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(run / "finetune.log", "a" if resume else "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"fine-tuning {run} failed (exit {rc}); see {run / 'finetune.log'}")
    out = run / "out"
    val = json.loads((out / "eval_results.json").read_text())
    test = json.loads((out / "test_results.json").read_text())
    record = {"side": side, "learning_rate": lr, "seed": seed, "val_accuracy": val["eval_accuracy"], "val_loss": val["eval_loss"],
              "test_accuracy": test["test_accuracy"], "wall_s": round(time.time() - start, 1)}
    done.write_text(json.dumps(record, indent=1))
    return record


def oversubscribed(jobs: int, threads: int, cores: int) -> str | None:
    """A warning when parallel runs ask for more threads than there are cores (measured: 2 jobs x 2 threads on
    2 cores ran 4.5x slower than 2 x 1), else None."""
    if jobs * threads <= cores:
        return None
    return (f"warning: {jobs} jobs x OMP_NUM_THREADS={threads} > {cores} cores: the runs will slow each other down; "
            f"use OMP_NUM_THREADS={max(1, cores // jobs)}")


def finetune(work: Path, name: str, sides, lrs, seeds, recipe: str, jobs: int, extra: list[str]) -> list[dict]:
    grid = [(side, lr, seed) for seed in seeds for side in sides for lr in lrs]
    warning = oversubscribed(jobs, int(_env()["OMP_NUM_THREADS"]), os.cpu_count() or 1)
    if warning:
        print(warning, file=sys.stderr)

    def one(g):  # a failed run (e.g. stopped by a signal) is reported and does not cancel the others
        try:
            return _finetune_one(work, name, *g, recipe, extra)
        except SystemExit as e:
            print(e, file=sys.stderr)
            return {"side": g[0], "learning_rate": g[1], "seed": g[2], "failed": str(e)}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, grid))


def _results(work: Path, name: str, side: str) -> list[dict]:
    records = []
    for path in sorted((work / name / "ft").glob(f"{side}-*/result.json")):
        record = json.loads(path.read_text())
        if "val_loss" not in record:  # runs recorded before the loss was: it is in the run's eval results
            evals = path.parent / "out" / "eval_results.json"
            record["val_loss"] = json.loads(evals.read_text()).get("eval_loss") if evals.is_file() else None
        records.append(record)
    return records


def select(records: list[dict]) -> dict:
    """One side: the payoff command's choice of learning rate (best mean validation accuracy; ties: the lower
    mean validation loss, then the smaller rate); its test accuracies per seed. Test scores play no part in
    the choice."""
    by_lr: dict[float, list[dict]] = {}
    for r in records:
        by_lr.setdefault(r["learning_rate"], []).append(r)
    # Only seeds finished at every learning rate: each rate's mean is then over the same seeds.
    complete = set.intersection(*({r["seed"] for r in rs} for rs in by_lr.values()))
    by_lr = {lr: [r for r in rs if r["seed"] in complete] for lr, rs in by_lr.items()}
    val_means = {lr: statistics.mean(r["val_accuracy"] for r in rs) for lr, rs in by_lr.items()}
    best, _ = select_learning_rate([{"learning_rate": r["learning_rate"], "eval_accuracy": r["val_accuracy"],
                                     "eval_loss": r.get("val_loss")} for rs in by_lr.values() for r in rs],
                                   "accuracy", higher_is_better=True)
    chosen = sorted(by_lr[best], key=lambda r: r["seed"])
    tests = [r["test_accuracy"] for r in chosen]
    return {"learning_rate": best, "val_mean_by_lr": {f"{lr:g}": round(v, 4) for lr, v in sorted(val_means.items())},
            "test_mean_by_lr": {f"{lr:g}": round(statistics.mean(r["test_accuracy"] for r in rs), 4) for lr, rs in sorted(by_lr.items())},
            "seeds": [r["seed"] for r in chosen], "val": [r["val_accuracy"] for r in chosen], "test": tests,
            "test_mean": statistics.mean(tests), "test_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0}


def report(work: Path, name: str, scratch_of: str | None) -> dict:
    out = {"name": name}
    pre_file = work / name / "pretrain.json"
    if pre_file.is_file():
        out["pretrain"] = json.loads(pre_file.read_text())
    pre = _results(work, name, "pretrained")
    scratch = _results(work, scratch_of or name, "scratch")
    if pre:
        out["pretrained"] = select(pre)
    if scratch:
        out["scratch"] = select(scratch)
        out["scratch_runs_of"] = scratch_of or name
    if pre and scratch:
        p, s = out["pretrained"], out["scratch"]
        common = sorted(set(p["seeds"]) & set(s["seeds"]))
        diffs = [p["test"][p["seeds"].index(k)] - s["test"][s["seeds"].index(k)] for k in common]
        gain = {"mean": statistics.mean(diffs), "seeds": common}
        if len(diffs) > 1:
            half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            gain["ci95"] = [gain["mean"] - half, gain["mean"] + half]
        out["gain"] = gain
    return out


def markdown_row(r: dict) -> str:
    """One line of the ablation table from a `report` result."""
    pct = lambda xs: "/".join(f"{100 * x:.1f}" for x in xs)
    pre, scr, gain, pt = r.get("pretrained"), r.get("scratch"), r.get("gain"), r.get("pretrain", {})
    cells = [r["name"], f"{pt.get('wall_s', float('nan')) / 60:.1f}" if pt else "", str(pt.get("steps", "")),
             (f"{pt['eval_loss']:.2f}" + (f" / {pt['eval_perplexity']:.0f}" if pt.get("eval_perplexity") else "")) if pt.get("eval_loss") else ""]
    for side in (pre, scr):
        spread = f" ± {100 * side['test_sd']:.1f}" if side and len(side["test"]) > 1 else " (1 seed)"
        cells.append(f"lr {side['learning_rate']:g}: {pct(side['test'])} = **{100 * side['test_mean']:.1f}{spread}**" if side else "")
    if gain:
        ci = gain.get("ci95")
        cells.append(f"{100 * gain['mean']:+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""))
    else:
        cells.append("")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["pretrain", "finetune", "report", "row"])
    ap.add_argument("name")
    ap.add_argument("--work", default="outputs/ablate")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE)
    ap.add_argument("--sides", default="pretrained,scratch")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--scratch_of", default=None, help="report: take the scratch runs of this other NAME (same architecture and tokenizer)")
    ap.add_argument("--json", default=None, help="report: also write the report here")
    # After `--`: run_pretrain.py arguments (pretrain) or extra run_finetune.py arguments (finetune).
    cut = argv.index("--") if "--" in argv else len(argv)
    a, rest = ap.parse_args(argv[:cut]), argv[cut + 1:]
    work = Path(a.work).resolve()
    if a.command == "pretrain":
        result = pretrain(work, a.name, rest)
    elif a.command == "finetune":
        result = finetune(work, a.name, a.sides.split(","), [float(x) for x in a.lrs.split(",")],
                          [int(x) for x in a.seeds.split(",")], a.recipe, a.jobs, rest)
    elif a.command == "row":
        print(markdown_row(report(work, a.name, a.scratch_of)))
        return 0
    else:
        result = report(work, a.name, a.scratch_of)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
