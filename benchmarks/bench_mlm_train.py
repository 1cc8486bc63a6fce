#!/usr/bin/env python
"""Training throughput: hfssl's loop (`hfssl.trainer.train` + MLMObjective) vs stock transformers
`Trainer` + `DataCollatorForLanguageModeling`, same model config, data, batch size and steps.

Both sides:
  * a fresh BERT (default 4 layers x 256 hidden, 4 heads, FFN 1024, vocab 8192, 128 positions),
    built by hfssl's MLMObjective from its config; transformers gets a fresh BertForMaskedLM
    from the same config;
  * the same WordPiece tokenizer (trained once by hfssl's `train_tokenizer`, saved, loaded by both);
  * the same training blocks: hfssl's packed 128-token blocks (its 95% train split of the built-in
    corpus); transformers gets that very dataset (plus a special_tokens_mask column, its
    documented fast path; remove_unused_columns=False so Trainer keeps it);
  * AdamW, linear schedule without warm-up, lr 1e-3, weight decay 0.01, clip 1.0, 15% masking,
    0.8/0.1/0.1 replacement; fp32 (or --bf16 autocast on both); same seed.

Differences that are the point: hfssl runs the MLM head on masked positions only
(SparseMaskedLM); stock BertForMaskedLM computes (B, T, V) logits everywhere. Differences that are
not: stock Trainer's default optimizer is `adamw_torch_fused` on torch >= 2.8, hfssl's loop uses
the foreach AdamW on CPU (fused only on CUDA); `--trainer_optim adamw_torch` matches them.

Timing excludes start-up on both sides: each side records a timestamp at the end of every update
(hfssl: the objective's `on_update` hook, called by the loop right after optimizer.step();
transformers: a TrainerCallback.on_step_end) and tokens per batch (a wrapper around each
collator, counting real tokens incl. [CLS]/[SEP]). tokens/s = tokens of updates
warmup+1..warmup+steps / time between the end of update `warmup` and the end of the last one.
Runs alternate hfssl / transformers in one process (ABBA...), so background load hits both alike.

    python benchmarks/bench_mlm_train.py                           # CPU, ~6 min on 2 busy cores
    python benchmarks/bench_mlm_train.py --steps 50 --batch_size 64 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed updates per run")
    p.add_argument("--warmup_steps", type=int, default=3, help="untimed updates first")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=None, help="default hidden_size // 64")
    p.add_argument("--intermediate_size", type=int, default=None, help="default 4 * hidden_size")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--reps", type=int, default=2, help="runs per side, alternating ABBA")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--trainer_optim", default=None, help="Trainer optim (default: stock Trainer default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/mlm_train_<date>.json)")
    return p.parse_args(argv)


ARGS = parse_args()
if ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both Accelerate (hfssl) and Trainer then pick the CPU

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments)

from hfssl.config import MLMConfig  # noqa: E402
from hfssl.data.text import builtin_corpus, train_tokenizer  # noqa: E402
from hfssl.objectives import build_objective  # noqa: E402
from hfssl.trainer import train  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Recorder:
    """End-of-update timestamps and tokens per collated batch, in order."""

    def __init__(self, sync_at: set[int]):
        self.step_ends: list[float] = []
        self.batch_tokens: list[int] = []
        self.sync_at = sync_at  # only sync the GPU at the window's edges: no extra syncs inside it

    def step_end(self):
        if len(self.step_ends) + 1 in self.sync_at:
            _sync()
        self.step_ends.append(time.perf_counter())

    def summary(self, warmup: int, steps: int) -> dict:
        if len(self.step_ends) < warmup + steps:
            raise RuntimeError(f"only {len(self.step_ends)} updates recorded, expected {warmup + steps}")
        window = self.step_ends[warmup + steps - 1] - self.step_ends[warmup - 1] if warmup else None
        tokens = sum(self.batch_tokens[warmup : warmup + steps])
        per_step = np.diff(self.step_ends[warmup - 1 : warmup + steps]) if warmup else np.array([])
        return {
            "seconds": window,
            "tokens": tokens,
            "tokens_per_s": tokens / window,
            "step_s_median": float(np.median(per_step)),
            "step_s_min": float(per_step.min()),
            "step_s_max": float(per_step.max()),
        }


# ----------------------------------------------------------------------------------- sides

def hfssl_config(args, tokenizer_dir: str, output_dir: str) -> MLMConfig:
    heads = args.heads or max(1, args.hidden_size // 64)
    return MLMConfig(
        output_dir=output_dir, overwrite_output_dir=True, seed=args.seed,
        model_type="bert", tokenizer_name=tokenizer_dir, vocab_size=args.vocab_size,
        config_overrides={"hidden_size": args.hidden_size, "num_hidden_layers": args.layers,
                          "num_attention_heads": heads, "intermediate_size": args.intermediate_size or 4 * args.hidden_size,
                          "max_position_embeddings": args.seq_len},
        max_seq_length=args.seq_len, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        max_steps=args.warmup_steps + args.steps, learning_rate=args.lr, weight_decay=0.01, warmup_steps=0,
        lr_scheduler_type="linear", mixed_precision="bf16" if args.bf16 else "no",
        logging_steps=max(1, args.warmup_steps + args.steps), eval_steps=0, max_eval_batches=1, save_steps=0)


def run_hfssl(args, tokenizer_dir: str, workdir: Path, rep: int):
    """One hfssl run through the real `train()`; returns (timing summary, objective, final loss)."""
    cfg = hfssl_config(args, tokenizer_dir, str(workdir / f"hfssl-{rep}"))
    objective = build_objective(cfg)  # start-up (data, model): not timed
    rec = Recorder({args.warmup_steps, args.warmup_steps + args.steps})
    collate, on_update = objective.collator, objective.on_update

    def counting_collator(examples, seed, progress=0.0):
        batch = collate(examples, seed=seed, progress=progress)
        rec.batch_tokens.append(batch["num_inputs"])
        return batch

    def timed_on_update(step, total_steps):
        rec.step_end()
        return on_update(step, total_steps)

    objective.collator = counting_collator
    objective.on_update = timed_on_update
    train(cfg, objective)
    log = [json.loads(line) for line in (workdir / f"hfssl-{rep}" / "training_log.jsonl").read_text().splitlines()]
    last = [r for r in log if "loss" in r and r["step"] == cfg.max_steps][-1]
    return rec.summary(args.warmup_steps, args.steps), objective, last["loss"]


class _StepTimer(TrainerCallback):
    def __init__(self, rec: Recorder):
        self.rec = rec

    def on_step_end(self, args, state, control, **kwargs):
        self.rec.step_end()


class _LossKeeper(TrainerCallback):
    def __init__(self):
        self.last = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last = logs["loss"]


def run_hf(args, tokenizer, model_config, train_dataset, workdir: Path, rep: int):
    """One stock Trainer run; returns (timing summary, final logged loss)."""
    transformers.set_seed(args.seed)
    model = BertForMaskedLM(model_config)
    rec = Recorder({args.warmup_steps, args.warmup_steps + args.steps})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=args.seed)

    def counting_collator(examples):
        batch = collator(examples)
        rec.batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    extra = {"optim": args.trainer_optim} if args.trainer_optim else {}
    targs = TrainingArguments(
        output_dir=str(workdir / f"hf-{rep}"), per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup_steps + args.steps, learning_rate=args.lr, weight_decay=0.01,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=args.warmup_steps + args.steps,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=args.device == "cpu", bf16=args.bf16, seed=args.seed, dataloader_num_workers=0,
        remove_unused_columns=False, **extra)
    keeper = _LossKeeper()
    trainer = Trainer(model=model, args=targs, train_dataset=train_dataset, data_collator=counting_collator,
                      callbacks=[_StepTimer(rec), keeper])
    trainer.train()
    return rec.summary(args.warmup_steps, args.steps), keeper.last, trainer.args.optim


# ----------------------------------------------------------------------------------- main

def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    import logging

    logging.getLogger("hfssl").setLevel(logging.WARNING)
    if args.warmup_steps < 1:
        raise SystemExit("--warmup_steps must be >= 1 (the window starts at the end of an update)")
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench_mlm_train_"))

    t0 = time.perf_counter()
    docs = builtin_corpus()
    tok_dir = str(workdir / "tokenizer")
    train_tokenizer(docs, "wordpiece", args.vocab_size).save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    print(f"tokenizer trained in {time.perf_counter() - t0:.1f}s; device {args.device}, bf16 {args.bf16}, "
          f"torch threads {torch.get_num_threads()}, load {load_before[0]:.2f}", flush=True)

    hf_dataset = model_config = None
    runs: dict[str, list[dict]] = {"hfssl": [], "hf": []}
    order = []
    for r in range(args.reps):
        order += ["hfssl", "hf"] if r % 2 == 0 else ["hf", "hfssl"]
    # order[0] is hfssl: its objective builds the blocks and model config transformers then reuses.
    counts = {"hfssl": 0, "hf": 0}
    info = {}
    for side in order:
        rep = counts[side]
        counts[side] += 1
        t0 = time.perf_counter()
        if side == "hfssl":
            summary, objective, loss = run_hfssl(args, tok_dir, workdir, rep)
            if hf_dataset is None:
                special = np.array(sorted(set(tokenizer.all_special_ids)))
                hf_dataset = objective.train_dataset.with_format(None).map(
                    lambda b: {"special_tokens_mask": [np.isin(np.asarray(x), special).astype(np.int8).tolist() for x in b["input_ids"]]},
                    batched=True)
                model_config = objective.model.mlm.config
                info = {"train_blocks": len(hf_dataset), "parameters": sum(p.numel() for p in objective.model.parameters()),
                        "model_config": {k: getattr(model_config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                              "intermediate_size", "vocab_size", "max_position_embeddings")}}
            del objective
        else:
            summary, loss, optim = run_hf(args, tokenizer, model_config, hf_dataset, workdir, rep)
            info["trainer_optim"] = str(optim)
        summary["final_loss"] = loss
        summary["wall_s_including_startup"] = time.perf_counter() - t0
        runs[side].append(summary)
        print(f"  {side:<6} run {rep}: {summary['tokens_per_s']:8.0f} tokens/s  (median step {summary['step_s_median']:.3f}s, "
              f"loss at step {args.warmup_steps + args.steps}: {loss:.3f})", flush=True)

    load_after = os.getloadavg()
    agg = {}
    for side, rs in runs.items():
        tokens = sum(r["tokens"] for r in rs)
        seconds = sum(r["seconds"] for r in rs)
        agg[side] = {"tokens_per_s": tokens / seconds, "tokens_per_s_runs": [r["tokens_per_s"] for r in rs],
                     "step_s_median": float(np.median([r["step_s_median"] for r in rs]))}
    ratio = agg["hfssl"]["tokens_per_s"] / agg["hf"]["tokens_per_s"]
    ratio_median_step = agg["hf"]["step_s_median"] / agg["hfssl"]["step_s_median"]
    print()
    print(f"{'side':<22} {'tokens/s':>10} {'per run':>22} {'median step':>12}")
    names = {"hfssl": "hfssl train()", "hf": "transformers Trainer"}
    for side in ("hfssl", "hf"):
        a = agg[side]
        per_run = ", ".join(f"{x:.0f}" for x in a["tokens_per_s_runs"])
        print(f"{names[side]:<22} {a['tokens_per_s']:>10.0f} {per_run:>22} {a['step_s_median']:>11.3f}s")
    print(f"\nratio hfssl/transformers (tokens/s over all timed steps): {ratio:.2f}x; from median step time: {ratio_median_step:.2f}x")
    print(f"{args.steps} timed updates after {args.warmup_steps} warm-up, batch {args.batch_size} x {args.seq_len}, "
          f"{info.get('parameters', 0) / 1e6:.1f}M parameters, Trainer optim {info.get('trainer_optim')}; load {load_before[0]:.2f} -> {load_after[0]:.2f}")

    date = datetime.date.today().isoformat()
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"mlm_train_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "mlm_train", "date": date, "args": vars(args), "order": order,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "loadavg_before": load_before, "loadavg_after": load_after},
        "setup": info, "runs": runs, "aggregate": agg,
        "ratio_tokens_per_s_hfssl_over_hf": ratio, "ratio_from_median_step": ratio_median_step,
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
