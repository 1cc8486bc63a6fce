"""The one training loop, run by Accelerate, shared by every pretraining objective and fine-tuning.

It is handed an objective (`hfssl.objectives.base.Objective`) and knows none by name; it calls only
the members that protocol declares. Design choices, and why:

* Loss normalization: every micro-batch returns, per loss term, a SUM over that term's targets
  (masked tokens, masked frames, real tokens, labels); before any forward pass the loop counts each
  term's targets over the whole update (all accumulation steps and processes, one all-reduce) and
  divides each term by its own count. A per-micro-batch mean would weight examples unequally when
  masked counts differ, and one divisor for all terms would be wrong for multi-term losses (ELECTRA).
* Randomness and data order are functions of position (`hfssl.data.batching`): resume is exact
  without replaying data, and 2 processes see the same batches, masks and dropout as 1 process with
  gradient accumulation 2.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from tqdm.auto import tqdm
from transformers import get_scheduler

from hfssl.checkpointing import resolve_resume, save_checkpoint
from hfssl.data.batching import Position, eval_batches, train_batches
from hfssl.errors import OutputDirError, RollbackRequested, TrainingStopped
from hfssl.config import TrainingArguments, save_config
from hfssl.objectives.base import Objective

logger = logging.getLogger(__name__)

LOG_FILE = "training_log.jsonl"


# ----------------------------------------------------------------------------------- the loop

@dataclass
class _State:
    step: int = 0  # optimizer updates done (including skipped non-finite ones)
    epoch: int = 0
    step_in_epoch: int = 0
    inputs_seen: float = 0.0  # tokens / audio seconds / examples
    targets_seen: int = 0
    bad_in_a_row: int = 0
    rollbacks: int = 0
    skipped_updates: list = field(default_factory=list)
    stream: Optional[list] = None  # per-process stream positions read from a checkpoint; used once, then None


class _Registered:
    """Adapter so Accelerate's save_state/load_state carries the scheduler-free extra state."""

    def __init__(self, get: Callable[[], dict], put: Callable[[dict], None]):
        self.get, self.put = get, put

    def state_dict(self):
        return self.get()

    def load_state_dict(self, state):
        self.put(state)


def train(cfg: TrainingArguments, objective: Objective, accelerator: Optional[Accelerator] = None) -> dict:
    """Run training and final evaluation; save the model with `objective.save_pretrained`.

    Returns the summary (final eval metrics, steps, inputs seen, output paths).
    """
    accelerator = accelerator or make_accelerator(cfg)
    out = Path(cfg.output_dir)
    W, A = accelerator.num_processes, cfg.gradient_accumulation_steps
    rank = accelerator.process_index

    model = objective.model
    if cfg.gradient_checkpointing:
        objective.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon, fused=torch.cuda.is_available())

    streaming = objective.streaming
    if streaming:
        steps_per_epoch = cfg.max_steps
    else:
        steps_per_epoch = len(objective.batch_plan(0, cfg.seed)) // (W * A)
        if steps_per_epoch == 0:
            raise TrainingStopped(
                f"The training set gives {len(objective.batch_plan(0, cfg.seed))} micro-batches per epoch, fewer than one "
                f"update needs ({W} processes x {A} accumulation steps). Lower the batch size or add data.")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)

    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.torch_compile:
        model = torch.compile(model, dynamic=True)
    state = _State()
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(_Registered(objective.state_dict, objective.load_state_dict))

    resume = resolve_resume(cfg.resume_from_checkpoint, out)
    if resume is not None:
        state = _resume(accelerator, resume, state, cfg, W)
    elif cfg.resume_from_checkpoint == "latest":
        logger.warning("resume_from_checkpoint=latest: no complete checkpoint in %s, starting from scratch.", out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "hfssl_config.yaml")
        _trim_log(out / LOG_FILE, state.step)
    if cfg.trackers:
        accelerator.init_trackers(objective.name, config=_flat(cfg))

    stop_requested = {"flag": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.update(flag=True)) if _main_thread() else None

    bar = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc=objective.name, dynamic_ncols=True)
    window: list[dict] = []
    t_last = time.perf_counter()
    data_iter = None
    log_path = out / LOG_FILE

    try:  # close the bar on errors too, so a message printed after it starts on its own line
        while state.step < total_steps:
            if data_iter is None:
                mine = state.stream[rank] if state.stream else None
                state.stream = None  # a later epoch starts at the beginning of the stream
                pos = Position(state.epoch, state.step_in_epoch, state.step - state.step_in_epoch, state.rollbacks, mine)
                data_iter = train_batches(objective, cfg, pos, W, rank, total_steps, steps_per_epoch)
            micro = []
            for _ in range(A):
                batch = next(data_iter, None)
                if batch is None:
                    break
                micro.append(batch)
            ended = len(micro) < A  # end of epoch: a partial update group is dropped
            if streaming and W > 1:
                # Each process reads its own shard of the stream, and shards end at different updates:
                # agree first, so that no process waits alone in a collective for one that has moved on.
                ended = accelerator.reduce(torch.tensor([float(ended)], device=accelerator.device), "sum").item() > 0
            if ended:
                if streaming and state.step_in_epoch == 0:
                    raise TrainingStopped(
                        f"The training stream gave no complete update: each process needs at least per_device_train_batch_size x "
                        f"gradient_accumulation_steps = {cfg.per_device_train_batch_size * A} examples. Add data or lower them.")
                state.epoch += 1  # a stream starts over from its beginning, like a map-style dataset
                state.step_in_epoch = 0
                data_iter = None
                continue

            # Global number of targets per loss term in this update: one all-reduce before any backward.
            counts = [_terms(b["num_targets"]) for b in micro]  # per micro-batch {term: targets}
            names = list(counts[0])
            local = [sum(c[k] for c in counts) for k in names] + [sum(b["num_inputs"] for b in micro)]
            totals = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device), "sum").tolist()
            n_targets, n_inputs = dict(zip(names, totals[:-1])), totals[-1]  # note: CPU-GPU sync point, once per update
            # DDP averages gradients over W processes: scale by W so each term becomes sum / its global count.
            scales = {k: W / max(n, 1.0) for k, n in n_targets.items()}

            sums: dict[str, torch.Tensor] = {}  # loss terms, then metrics weighted by their term's count
            model.train()
            for a, batch in enumerate(micro):
                inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                torch.manual_seed(batch["seed"])  # dropout / Gumbel noise as a function of batch position
                sync = contextlib.nullcontext() if a == A - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    outputs = model(**inputs)
                    terms = _terms(outputs["loss_sum"])
                    accelerator.backward(sum(terms[k] * scales[k] for k in names))
                _accumulate(sums, outputs, terms, counts[a], names)

            reduced = _reduce_sums(accelerator, sums)
            term_losses = {k: reduced.pop(f"loss/{k}") / max(n_targets[k], 1.0) for k in names}
            loss = sum(term_losses.values())
            metrics = {k: v / max(n_targets[_term_of(k, names)], 1.0) for k, v in sorted(reduced.items())}
            if len(names) > 1:
                metrics.update({f"loss_{k}": v for k, v in term_losses.items()})
                metrics.update({f"num_{k}_targets": int(n) for k, n in n_targets.items()})
            grad_norm = None
            finite = math.isfinite(loss) and sum(n_targets.values()) > 0
            if finite:  # max_grad_norm 0: measure the norm (logged, checked) without clipping
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf")))
                finite = math.isfinite(grad_norm)
            if finite:
                optimizer.step()
                scheduler.step()
                state.bad_in_a_row = 0
            else:
                ids = sorted(i for b in micro for i in b["sample_ids"])
                state.bad_in_a_row += 1
                state.skipped_updates.append({"step": state.step + 1, "loss": loss, "grad_norm": grad_norm, "sample_ids": ids[:64]})
                logger.warning("Update %d skipped: non-finite loss/gradient (loss=%s, grad_norm=%s, %d targets); samples %s",
                               state.step + 1, loss, grad_norm, int(sum(n_targets.values())), ids[:64])
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            state.inputs_seen += n_inputs
            state.targets_seen += int(n_targets[names[0]])
            extra = objective.on_update(state.step, total_steps) or {}

            now = time.perf_counter()
            row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm, "num_targets": int(n_targets[names[0]]), **metrics, **extra,
                   f"{objective.input_unit}_per_second": n_inputs / (now - t_last), "time": round(time.time(), 3)}
            window.append(row)
            if accelerator.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            bar.update(1)

            if state.bad_in_a_row >= cfg.max_bad_steps:
                raise TrainingStopped(
                    f"{state.bad_in_a_row} updates in a row had a non-finite loss or gradient (last at step {state.step}; "
                    f"samples {state.skipped_updates[-1]['sample_ids']}). Lower the learning rate, use bf16 instead of fp16, "
                    f"or check the data; the last checkpoint is in {out}.")
            try:
                problem = objective.check_health(window)
            except RollbackRequested as request:
                if state.rollbacks >= cfg.max_rollbacks:
                    raise TrainingStopped(f"{request} Already rolled back {state.rollbacks} times (max_rollbacks); stopping.") from None
                logger.warning("%s Rolling back to %s with fresh masks and noise.", request, request.checkpoint)
                rollbacks = state.rollbacks + 1
                state = _resume(accelerator, Path(request.checkpoint), state, cfg, W)
                state.rollbacks = rollbacks
                if accelerator.is_main_process:
                    _trim_log(log_path, state.step)
                bar.reset(total=total_steps)
                bar.update(state.step)
                data_iter, window = None, []
                continue
            if problem:
                raise TrainingStopped(problem)

            if state.step % cfg.logging_steps == 0 or state.step == total_steps:
                avg = _average(window)
                window.clear()
                bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items() if k in ("loss", "accuracy", "lr")})
                if cfg.trackers:
                    accelerator.log({f"train/{k}": v for k, v in avg.items()}, step=state.step)

            if cfg.eval_steps and state.step % cfg.eval_steps == 0 and state.step < total_steps and objective.eval_dataset is not None:
                _evaluate_and_log(accelerator, model, objective, cfg, state.step, log_path)
            if (cfg.save_steps and state.step % cfg.save_steps == 0) or stop_requested["flag"]:
                saved = _trainer_state(state, cfg, W)
                if streaming:  # where each process's stream goes on (JSON), so that resuming seeks instead of re-reading
                    saved["stream"] = gather_object([data_iter.state_dict()]) if W > 1 else [data_iter.state_dict()]
                save_checkpoint(accelerator, out, state.step, saved, cfg.save_total_limit)
            if stop_requested["flag"]:
                bar.close()
                logger.warning("SIGTERM: checkpoint-%d written; exiting with 143. Resume with --resume_from_checkpoint latest.", state.step)
                accelerator.end_training()
                raise SystemExit(143)
            t_last = time.perf_counter()  # throughput excludes evaluation and checkpointing
    finally:
        bar.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    final_eval = {}
    if objective.eval_dataset is not None:
        final_eval = _evaluate_and_log(accelerator, model, objective, cfg, state.step, log_path)
    summary = {"objective": objective.name, "steps": state.step, f"{objective.input_unit}_seen": state.inputs_seen,
               "targets_seen": state.targets_seen, "skipped_updates": len(state.skipped_updates), **final_eval}
    accelerator.wait_for_everyone()
    objective.model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        objective.save_pretrained(str(out), summary)
        (out / "train_results.json").write_text(json.dumps(summary, indent=1))
        from hfssl.plots import plot_training_curves

        plot_training_curves(log_path, out / "training_curves.png", title=f"{objective.name}: {out.name}")
    # The caller ends the run (accelerator.end_training()): it may still evaluate across processes.
    return summary


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, objective: Objective, cfg: TrainingArguments) -> dict[str, float]:
    """Loss (each term's sum / its targets, added up) and metrics over the eval set with fixed masks."""
    W, rank = accelerator.num_processes, accelerator.process_index
    # The unwrapped module: a DDP forward would wait for processes that have no batch left.
    model = accelerator.unwrap_model(model).eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    for batch in eval_batches(objective, cfg, W, rank):
        inputs = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        torch.manual_seed(batch["seed"])
        with accelerator.autocast():
            outputs = model(**inputs)
        terms, n = _terms(outputs["loss_sum"]), _terms(batch["num_targets"])
        _accumulate(sums, outputs, terms, n, list(n))
        for k, v in n.items():
            counts[k] = counts.get(k, 0.0) + v
    # Processes may hold different batches (or none): agree on the names before reducing.
    names = sorted({k for ks in gather_object([list(sums)]) for k in ks}) if W > 1 else sorted(sums)
    terms = sorted({k for ks in gather_object([list(counts)]) for k in ks}) if W > 1 else sorted(counts)
    zero = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(torch.stack([sums.get(k, zero).double() for k in names]
                                           + [zero + counts.get(k, 0.0) for k in terms]), "sum").tolist()
    n_total = dict(zip(terms, total[len(names):]))
    reduced = dict(zip(names, total[: len(names)]))
    order = [k[len("loss/"):] for k in names if k.startswith("loss/")]
    term_losses = {k: reduced.pop(f"loss/{k}") / max(n_total.get(k, 0.0), 1.0) for k in order}
    result = {"eval_loss": sum(term_losses.values())}
    if len(order) > 1:
        result.update({f"eval_loss_{k}": v for k, v in term_losses.items()})
    for k, v in reduced.items():
        result[f"eval_{k}"] = v / max(n_total.get(_term_of(k, order), 0.0), 1.0)
    result["eval_targets"] = int(n_total.get(order[0], 0)) if order else 0
    return objective.eval_summary(result)


def _terms(x) -> dict:
    """A loss sum or target count, for one term (a scalar) or several ({term: value}), as {term: value}."""
    return dict(x) if isinstance(x, dict) else {"loss": x}


def _term_of(metric: str, terms: list[str]) -> str:
    """The loss term whose target count weights `metric`: its name prefix, else the first term."""
    return next((t for t in terms if metric.startswith(t + "_")), terms[0])


def _accumulate(sums: dict, outputs: dict, terms: dict, counts: dict, names: list[str]) -> None:
    """Add one micro-batch to the running sums: 'loss/<term>' sums, and each metric (a per-target mean)
    times its term's target count, so that dividing by the global count gives the global mean."""
    for k in names:
        sums[f"loss/{k}"] = sums.get(f"loss/{k}", 0.0) + terms[k].detach().double()
    for k, v in outputs.items():
        if k != "loss_sum":
            sums[k] = sums.get(k, 0.0) + v.detach().double() * counts[_term_of(k, names)]


def _reduce_sums(accelerator, sums: dict) -> dict[str, float]:
    """Sum every running sum over processes in one all-reduce (one sync), as Python floats."""
    names = sorted(sums)
    total = accelerator.reduce(torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=accelerator.device)
                                            for k in names]), "sum").tolist()
    return dict(zip(names, total))


def _evaluate_and_log(accelerator, model, objective, cfg, step, log_path) -> dict:
    result = evaluate(accelerator, model, objective, cfg)
    if accelerator.is_main_process:
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        if cfg.trackers:
            accelerator.log({k.replace("eval_", "eval/"): v for k, v in result.items()}, step=step)
    return result


def _trainer_state(state: _State, cfg, W: int) -> dict:
    return {**state.__dict__, "world_size": W, "global_batch_size": cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps,
            "per_device_train_batch_size": cfg.per_device_train_batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "seed": cfg.seed}


def _resume(accelerator, path: Path, state: _State, cfg, W) -> _State:
    saved = json.loads((path / "trainer_state.json").read_text())
    global_batch = cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps
    if saved["seed"] != cfg.seed:
        raise TrainingStopped(
            f"Checkpoint {path} was written with seed {saved['seed']}; this run has seed {cfg.seed}. Exact resume replays the "
            f"same data order, masks and dropout, which the seed decides: resume with --seed {saved['seed']}.")
    if saved["global_batch_size"] != global_batch:
        raise TrainingStopped(
            f"Checkpoint {path} was written with global batch size {saved['global_batch_size']} (per device "
            f"{saved['per_device_train_batch_size']} x {saved['world_size']} processes x {saved['gradient_accumulation_steps']} "
            f"accumulation); this run has {global_batch}. Exact resume needs the same global batch: change "
            f"per_device_train_batch_size/gradient_accumulation_steps to match.")
    if any(saved.get("stream") or []) and saved["world_size"] != W:
        raise TrainingStopped(
            f"Checkpoint {path} streams its corpus over {saved['world_size']} processes, each reading its own part of the "
            f"stream; this run has {W}. Resume a streamed run on {saved['world_size']} processes.")
    if saved["world_size"] != W:
        logger.warning("Resuming %s on %d processes (saved with %d): same global batch, so the data order and masks are unchanged.",
                       path, W, saved["world_size"])
    accelerator.load_state(str(path))
    fields = {k: v for k, v in saved.items() if k in _State.__dataclass_fields__}
    logger.info("Resumed from %s at step %d.", path, saved["step"])
    return _State(**fields)


def _trim_log(path: Path, step: int) -> None:
    """On resume drop log rows written after the checkpoint (by the interrupted run)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def make_accelerator(cfg: TrainingArguments) -> Accelerator:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Accelerate only sets up multi-process CPU training (gloo) when asked for the CPU explicitly;
    # otherwise every process of `torchrun` on a GPU-less machine would silently train alone.
    cpu = launched > 1 and not torch.cuda.is_available()
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "runs"))
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.trackers or None,
                              project_config=project, cpu=cpu)
    if accelerator.num_processes != launched:
        raise TrainingStopped(
            f"{launched} processes were launched but Accelerate set up {accelerator.num_processes}: each would train "
            f"alone. Run `accelerate config` or launch with `accelerate launch --num_processes {launched}`.")
    return accelerator


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _average(rows: list[dict]) -> dict[str, float]:
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "time"}
    out = {}
    for k in sorted(keys):
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def _flat(cfg) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.__dict__.items()}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def check_output_dir(cfg: TrainingArguments) -> None:
    """Refuse to write into a folder holding an earlier run unless asked (overwrite or resume)."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir '{out}' exists and is a file.")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir and not cfg.resume_from_checkpoint:
        raise OutputDirError(
            f"output_dir '{out}' already holds files from an earlier run. Use --overwrite_output_dir to write into it, "
            f"--resume_from_checkpoint latest to continue it, or choose another --output_dir.")
