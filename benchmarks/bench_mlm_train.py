#!/usr/bin/env python
"""Training throughput: hfssl's loop (`hfssl.trainer.train` + MLMObjective) vs stock transformers
`Trainer` + `DataCollatorForLanguageModeling`, same model config, data, batch size and steps.

Both sides:
  * a fresh BERT (default 4 layers x 256 hidden, 4 heads, FFN 1024, vocab 8192, 128 positions),
    built by hfssl's MLMObjective from its config; transformers gets a fresh BertForMaskedLM
    from a copy of that config;
  * the same WordPiece tokenizer (trained once by hfssl's `train_tokenizer`, saved, loaded by both);
  * the same training blocks: hfssl's packed 128-token blocks (its 95% train split of the built-in
    corpus); transformers gets that very dataset plus a special_tokens_mask column (its
    documented fast path; remove_unused_columns=False so Trainer keeps it);
  * AdamW, linear decay without warm-up, lr 1e-3, weight decay 0.01, clip 1.0, 15% masking,
    0.8/0.1/0.1 replacement, batch 32, gradient accumulation 1; fp32 (or --bf16 on both).

The difference that is the point: hfssl runs the MLM head on masked positions only
(SparseMaskedLM); stock BertForMaskedLM computes (B, T, V) logits everywhere. Optimizer differences:
none since 2026-12-05: stock Trainer's default optimizer is `adamw_torch_fused` (torch >= 2.8), and hfssl's
loop now uses the fused AdamW on the CPU too (before: torch's default off CUDA, which on a CPU is the
single-tensor loop). `--trainer_optim adamw_torch` gives Trainer that default.

Timing excludes start-up on both sides. A loop iteration is timed from one "checkpoint" to the
next, the same point of consecutive updates: hfssl, entry to its collator (its loop fetches each
update's batch first; a wrapper around objective.collator); transformers, TrainerCallback
.on_step_begin (after its batch fetch). So an iteration holds everything the loop does per
update: one collation, forward, backward, clipping, optimizer, logging. Each side runs
warmup + steps + 1 updates; iterations warmup+1 .. warmup+steps are timed; tokens are the real
tokens (incl. [CLS]/[SEP]) of their batches, counted by a collator wrapper.

--mode steps (default): both trainings run at once in one process (hfssl's train() in the main
thread, Trainer.train() in a second thread) and take turns update by update: a baton passes at
each checkpoint, so exactly one side computes at a time and background load that comes and goes
over seconds hits both alike. (hfssl's own per-update tokens_per_second in training_log.jsonl then
includes the wait for the baton; this script's numbers exclude it.)
--mode runs: whole runs one after the other (hfssl, transformers, transformers, hfssl, ...).
In both modes the sides share torch's global RNG, which hfssl reseeds every update, so
transformers' dropout (and its mean loss) varies from rep to rep; speed is unaffected.

    python benchmarks/bench_mlm_train.py --threads 1               # CPU, ~4 min per rep on 2 busy cores
    python benchmarks/bench_mlm_train.py --steps 50 --batch_size 64 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed updates per side and rep")
    p.add_argument("--warmup_steps", type=int, default=3, help="untimed updates first")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=None, help="default hidden_size // 64")
    p.add_argument("--intermediate_size", type=int, default=None, help="default 4 * hidden_size")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mode", choices=["steps", "runs"], default="steps",
                   help="steps: interleave update by update in one process; runs: whole runs ABBA")
    p.add_argument("--reps", type=int, default=1, help="paired repetitions (fresh models each)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--trainer_optim", default=None, help="Trainer optim (default: stock Trainer default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/mlm_train_<date>.json)")
    args = p.parse_args(argv)
    if args.warmup_steps < 0 or args.steps < 1:
        p.error("--steps must be >= 1 and --warmup_steps >= 0")
    return args


ARGS = parse_args()
if ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both Accelerate (hfssl) and Trainer then pick the CPU

import datasets  # noqa: E402
import torch  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments)
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from hfssl.objectives.mlm.config import MLMConfig  # noqa: E402
from hfssl.data.text.corpus import builtin_corpus  # noqa: E402
from hfssl.data.text.tokenizer import train_tokenizer  # noqa: E402
from hfssl.objectives import build_objective  # noqa: E402
from hfssl.trainer import train  # noqa: E402

SIDES = ("hfssl", "hf")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- timing

class Timeline:
    """One side's timed loop iterations (start, end) and the tokens of each batch, in order."""

    def __init__(self):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.batch_tokens: list[int] = []
        self.holding = False

    def summary(self, warmup: int, steps: int) -> dict:
        if len(self.ends) < warmup + steps:
            raise RuntimeError(f"only {len(self.ends)} iterations timed, expected {warmup + steps}")
        durations = np.array(self.ends[warmup : warmup + steps]) - np.array(self.starts[warmup : warmup + steps])
        tokens = int(sum(self.batch_tokens[warmup : warmup + steps]))
        seconds = float(durations.sum())
        return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                "step_s_median": float(np.median(durations)), "step_s_min": float(durations.min()),
                "step_s_max": float(durations.max()),
                "iterations": [[round(a, 4), round(b, 4)] for a, b in zip(self.starts, self.ends)]}  # perf_counter s


class Turns:
    """Checkpoints for both sides. exclusive=True: a baton, so only one side runs between
    checkpoints (the other waits, untimed); exclusive=False: plain timestamps."""

    def __init__(self, exclusive: bool, first: str = "hfssl"):
        self.exclusive = exclusive
        self.timelines = {s: Timeline() for s in SIDES}
        self.turn = first
        self.done: set[str] = set()
        self.cond = threading.Condition()

    @staticmethod
    def _other(me: str) -> str:
        return "hf" if me == "hfssl" else "hfssl"

    def checkpoint(self, me: str) -> None:
        tl, other = self.timelines[me], self._other(me)
        _sync()  # the GPU work queued in this iteration belongs to it
        now = time.perf_counter()
        with self.cond:
            if tl.holding:
                tl.ends.append(now)
                tl.holding = False
                self.turn = other
                self.cond.notify_all()
            if self.exclusive:
                while self.turn != me and other not in self.done:
                    self.cond.wait(1.0)
            self.turn = me
            tl.holding = True
        tl.starts.append(time.perf_counter())

    def finish(self, me: str) -> None:
        tl = self.timelines[me]
        _sync()
        now = time.perf_counter()
        with self.cond:
            if tl.holding:
                tl.ends.append(now)
                tl.holding = False
            self.done.add(me)
            self.turn = self._other(me)
            self.cond.notify_all()


# ----------------------------------------------------------------------------------- sides

def hfssl_config(args, tokenizer_dir: str, output_dir: str) -> MLMConfig:
    heads = args.heads or max(1, args.hidden_size // 64)
    total = args.warmup_steps + args.steps + 1
    return MLMConfig(
        output_dir=output_dir, overwrite_output_dir=True, seed=args.seed,
        model_type="bert", tokenizer_name=tokenizer_dir, vocab_size=args.vocab_size,
        config_overrides={"hidden_size": args.hidden_size, "num_hidden_layers": args.layers,
                          "num_attention_heads": heads, "intermediate_size": args.intermediate_size or 4 * args.hidden_size,
                          "max_position_embeddings": args.seq_len},
        max_seq_length=args.seq_len, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        max_steps=total, learning_rate=args.lr, weight_decay=0.01, warmup_steps=0, lr_scheduler_type="linear",
        mixed_precision="bf16" if args.bf16 else "no", logging_steps=total, eval_steps=0, max_eval_batches=1, save_steps=0)


class HfsslSide:
    """hfssl's real `train()`, instrumented from outside: collator and on_update wrappers."""

    def __init__(self, args, tokenizer_dir: str, output_dir: Path, turns: Turns):
        self.cfg = hfssl_config(args, tokenizer_dir, str(output_dir))
        set_seed(self.cfg.seed)  # as run_pretrain does before building the objective (model initialization)
        self.objective = build_objective(self.cfg)  # start-up (data, model): not timed
        self.turns, self.calls = turns, 0
        tl = turns.timelines["hfssl"]
        collate, on_update = self.objective.collator, self.objective.on_update
        total = self.cfg.max_steps

        def timed_collator(examples, seed, progress=0.0):
            self.calls += 1
            training = self.calls <= total  # later calls are the final evaluation's
            if training:
                turns.checkpoint("hfssl")
            batch = collate(examples, seed=seed, progress=progress)
            if training:
                tl.batch_tokens.append(batch["num_inputs"])
            return batch

        def timed_on_update(step, total_steps):
            out = on_update(step, total_steps)
            if step == total_steps:
                turns.finish("hfssl")
            return out

        self.objective.collator = timed_collator
        self.objective.on_update = timed_on_update

    def run(self) -> float:
        """Train; returns the mean training loss over all updates."""
        try:
            train(self.cfg, self.objective)
        finally:
            self.turns.finish("hfssl")
        log = Path(self.cfg.output_dir) / "training_log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        return float(np.mean([r["loss"] for r in rows if "loss" in r]))


class _Checkpoints(TrainerCallback):
    def __init__(self, turns: Turns):
        self.turns = turns
        self.mean_loss = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.turns.checkpoint("hf")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # one log (logging_steps = all updates): the mean training loss
            self.mean_loss = logs["loss"]

    def on_train_end(self, args, state, control, **kwargs):
        self.turns.finish("hf")


class HfSide:
    """Stock Trainer + DataCollatorForLanguageModeling; only a token-counting wrapper around the collator."""

    def __init__(self, args, tokenizer, model_config, train_dataset, output_dir: Path, turns: Turns):
        self.args, self.turns = args, turns
        transformers.set_seed(args.seed)
        model = BertForMaskedLM(copy.deepcopy(model_config))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=args.seed)
        tl = turns.timelines["hf"]

        def counting_collator(examples):
            batch = collator(examples)
            tl.batch_tokens.append(int(batch["attention_mask"].sum()))
            return batch

        total = args.warmup_steps + args.steps + 1
        extra = {"optim": args.trainer_optim} if args.trainer_optim else {}
        targs = TrainingArguments(
            output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, max_steps=total,
            learning_rate=args.lr, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
            max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0, logging_steps=total,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=args.device == "cpu", bf16=args.bf16, seed=args.seed, dataloader_num_workers=0,
            remove_unused_columns=False, **extra)
        self.callback = _Checkpoints(turns)
        self.trainer = Trainer(model=model, args=targs, train_dataset=train_dataset, data_collator=counting_collator,
                               callbacks=[self.callback])
        self.trainer.remove_callback(PrinterCallback)  # its per-log prints are noise here
        self.error = None

    def run(self) -> float:
        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        try:
            self.trainer.train()
        except BaseException as e:  # re-raised by the main thread
            self.error = e
        finally:
            self.turns.finish("hf")
        return self.callback.mean_loss


# ----------------------------------------------------------------------------------- main

def hf_dataset_from(objective, tokenizer):
    """hfssl's packed training blocks as a plain Dataset (python lists) + special_tokens_mask."""
    special = np.array(sorted(set(tokenizer.all_special_ids)))
    return objective.train_dataset.with_format(None).map(
        lambda b: {"special_tokens_mask": [np.isin(np.asarray(x), special).astype(np.int8).tolist() for x in b["input_ids"]]},
        batched=True)


def run_pair(args, rep: int, tok_dir: str, tokenizer, workdir: Path, shared: dict) -> dict:
    turns = Turns(exclusive=args.mode == "steps")
    ours = HfsslSide(args, tok_dir, workdir / f"hfssl-{rep}", turns)
    if "dataset" not in shared:
        shared["dataset"] = hf_dataset_from(ours.objective, tokenizer)
        config = ours.objective.model.mlm.config
        shared["config"] = copy.deepcopy(config)
        shared["info"] = {
            "train_blocks": len(shared["dataset"]),
            "parameters": sum(p.numel() for p in ours.objective.model.parameters()),
            "model_config": {k: getattr(config, k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                            "intermediate_size", "vocab_size", "max_position_embeddings")}}
    theirs = HfSide(args, tokenizer, shared["config"], shared["dataset"], workdir / f"hf-{rep}", turns)
    shared["info"]["trainer_optim"] = str(theirs.trainer.args.optim)
    loss = {}
    if args.mode == "steps":
        box = {}
        thread = threading.Thread(target=lambda: box.update(loss=theirs.run()), name="hf-trainer")
        thread.start()
        try:
            loss["hfssl"] = ours.run()
        finally:
            thread.join()
        loss["hf"] = box.get("loss")
    else:
        order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            loss[side] = ours.run() if side == "hfssl" else theirs.run()
    if theirs.error is not None:
        raise theirs.error
    out = {}
    for side in SIDES:
        out[side] = turns.timelines[side].summary(args.warmup_steps, args.steps)
        out[side]["mean_train_loss"] = loss[side]
    return out


def main(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench_mlm_train_"))  # tokenizer, both runs' outputs
    try:
        return measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args, workdir: Path) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("hfssl").setLevel(logging.WARNING)
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    tok_dir = str(workdir / "tokenizer")
    train_tokenizer(builtin_corpus(), "wordpiece", args.vocab_size).save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    print(f"tokenizer trained in {time.perf_counter() - t0:.1f}s; mode {args.mode}, device {args.device}, bf16 {args.bf16}, "
          f"torch threads {torch.get_num_threads()}, load {load_before[0]:.2f}", flush=True)

    shared: dict = {}
    reps = []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        r = run_pair(args, rep, tok_dir, tokenizer, workdir, shared)
        r["wall_s"] = time.perf_counter() - t0
        r["ratio"] = r["hfssl"]["tokens_per_s"] / r["hf"]["tokens_per_s"]
        reps.append(r)
        for side in SIDES:
            x = r[side]
            print(f"  rep {rep} {side:<6} {x['tokens_per_s']:8.0f} tokens/s  median step {x['step_s_median']:.3f}s "
                  f"(min {x['step_s_min']:.3f}, max {x['step_s_max']:.3f}), mean train loss {x['mean_train_loss']:.3f}", flush=True)
        print(f"  rep {rep} ratio hfssl/transformers {r['ratio']:.2f}x  (wall {r['wall_s']:.0f}s, load {os.getloadavg()[0]:.2f})", flush=True)

    load_after = os.getloadavg()
    agg = {}
    for side in SIDES:
        agg[side] = {"tokens_per_s": sum(r[side]["tokens"] for r in reps) / sum(r[side]["seconds"] for r in reps),
                     "step_s_median": float(np.median([r[side]["step_s_median"] for r in reps]))}
    ratio = agg["hfssl"]["tokens_per_s"] / agg["hf"]["tokens_per_s"]
    ratio_median_step = agg["hf"]["step_s_median"] / agg["hfssl"]["step_s_median"]
    info = shared["info"]
    print()
    print(f"{'side':<22} {'tokens/s':>10} {'median step':>12}")
    for side, name in (("hfssl", "hfssl train()"), ("hf", "transformers Trainer")):
        print(f"{name:<22} {agg[side]['tokens_per_s']:>10.0f} {agg[side]['step_s_median']:>11.3f}s")
    per_rep = ", ".join(f"{r['ratio']:.2f}x" for r in reps)
    print(f"\nratio hfssl/transformers: {ratio:.2f}x tokens/s (all timed updates); {ratio_median_step:.2f}x from median "
          f"update time; per rep: {per_rep}")
    print(f"mode {args.mode}, {args.reps} rep(s) x {args.steps} timed updates after {args.warmup_steps} warm-up, batch "
          f"{args.batch_size} x {args.seq_len}, {info['parameters'] / 1e6:.1f}M parameters, Trainer optim {info['trainer_optim']}; "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")

    date = datetime.date.today().isoformat()
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"mlm_train_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "mlm_train", "date": date, "args": vars(args),
        "env": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "loadavg_before": load_before, "loadavg_after": load_after},
        "setup": info, "reps": reps, "aggregate": agg,
        "ratio_tokens_per_s_hfssl_over_hf": ratio, "ratio_from_median_step": ratio_median_step,
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
