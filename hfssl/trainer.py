"""The one training loop, run by Accelerate, shared by every pretraining objective and fine-tuning.

It is handed an objective (see `Objective`) and knows none by name. Design choices, and why:

* Loss normalization: every micro-batch returns a SUM over its targets (masked tokens, masked
  frames, labels); the loop divides by the number of targets in the whole update, gathered across
  accumulation steps and processes. A per-micro-batch mean would weight examples unequally when
  masked counts differ.
* Randomness is a function of position: micro-batch `g` of epoch `e` gets seed f(seed, e, g), used
  for its masks (in the collator) and for dropout/Gumbel noise (the global RNG is reseeded before its
  forward). Resume is then exact without replaying data, and 2 processes see the same batches, masks
  and dropout as 1 process with gradient accumulation 2.
* Data order: each epoch the objective plans the global sequence of micro-batches; update `s` uses
  micro-batches s*W*A .. (s+1)*W*A-1 (W processes, A accumulation steps); process r takes every W-th.
  Resuming skips by index, never by reading data.
* Checkpoints carry no code: the scheduler's and the objective's state go into trainer_state.json
  (`Objective.state_dict` must be JSON), the rest through Accelerate (`hfssl.checkpointing`).
  output_dir is locked and checked by `hfssl.run_dir` before the run starts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hfssl.checkpointing import list_checkpoints, save_checkpoint, verify_on_main
from hfssl.errors import RollbackRequested, TrainingStopped
from hfssl.config import TrainingArguments, save_config
from hfssl.run_dir import RunDir, close_run_dir, open_run_dir, save_final, trim_log
from hfssl.schedules import build_scheduler, steps_on_eval_loss

logger = logging.getLogger(__name__)

LOG_FILE = "training_log.jsonl"


class Objective(Protocol):
    """What the loop needs from an objective (MLM, wav2vec2, HuBERT, a fine-tuning task)."""

    name: str
    model: torch.nn.Module  # forward(**inputs) -> {"loss_sum": scalar, **metrics}
    collator: Callable[..., dict]  # (examples, seed, progress) -> inputs + num_targets + num_inputs
    train_dataset: Any
    eval_dataset: Any
    input_unit: str  # what num_inputs counts: "tokens", "audio_seconds", "examples"

    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]: ...
    def eval_plan(self) -> list[list[int]]: ...
    def on_update(self, step: int, total_steps: int) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...  # JSON: saved in trainer_state.json
    def load_state_dict(self, state: dict) -> None: ...
    def eval_summary(self, metrics: dict[str, float]) -> dict[str, float]: ...
    def save_pretrained(self, output_dir: str, summary: dict) -> None: ...


def batch_seed(seed: int, epoch: int, index: int, salt: int = 0) -> int:
    """A well-mixed 63-bit seed for micro-batch `index` of `epoch` (epoch -1: evaluation).

    `salt` (the number of rollbacks so far) gives a rolled-back run new masks and noise instead of
    replaying the ones that led to the problem."""
    entropy = [seed, epoch + 1, index] + ([salt] if salt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Plain batch plan: a seeded permutation of range(n) cut into batches (last one may be short)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


# ----------------------------------------------------------------------------------- data loading

@dataclass(frozen=True)
class _Key:
    seed: int
    progress: float
    index: int


class _Keyed(torch.utils.data.Dataset):
    """Lets a batch sampler pass the micro-batch seed to the collator alongside the indices."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitems__(self, keys: list[tuple[_Key, int]]):
        indices = [i for _, i in keys]
        if hasattr(self.dataset, "__getitems__"):
            rows = self.dataset.__getitems__(indices)
        else:
            rows = [self.dataset[i] for i in indices]
        return keys[0][0], rows, indices


def _collate_with(collator):
    def collate(item):
        key, rows, indices = item
        batch = collator(rows, seed=key.seed, progress=key.progress)
        batch["sample_ids"] = indices
        batch["seed"] = key.seed
        return batch

    return collate


def _loader(dataset, batches: list[list[int]], keys: list[_Key], collator, num_workers: int) -> DataLoader:
    sampler = [[(k, i) for i in b] for k, b in zip(keys, batches)]
    return DataLoader(_Keyed(dataset), batch_sampler=sampler, collate_fn=_collate_with(collator),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available())


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


def train(cfg: TrainingArguments, objective: Objective, accelerator: Optional[Accelerator] = None) -> dict:
    """Run training and final evaluation; save the model with `objective.save_pretrained`.

    Returns the summary (final eval metrics, steps, inputs seen, output paths). output_dir is
    opened (locked, checked) here unless the entry point already opened it.
    """
    accelerator = accelerator or make_accelerator(cfg)
    run = open_run_dir(cfg, accelerator)
    try:
        return _train(cfg, objective, accelerator, run)
    finally:
        close_run_dir(run)


def _train(cfg: TrainingArguments, objective: Objective, accelerator: Accelerator, run: RunDir) -> dict:
    out = Path(cfg.output_dir)
    W, A = accelerator.num_processes, cfg.gradient_accumulation_steps
    rank = accelerator.process_index

    model = objective.model
    if cfg.gradient_checkpointing:
        objective.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon, fused=torch.cuda.is_available())

    streaming = not hasattr(objective.train_dataset, "__len__")
    if streaming:
        steps_per_epoch = cfg.max_steps
    else:
        steps_per_epoch = len(objective.batch_plan(0, cfg.seed)) // (W * A)
        if steps_per_epoch == 0:
            raise TrainingStopped(
                f"The training set gives {len(objective.batch_plan(0, cfg.seed))} micro-batches per epoch, fewer than one "
                f"update needs ({W} processes x {A} accumulation steps). Lower the batch size or add data.")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    on_eval_loss = steps_on_eval_loss(scheduler)
    if on_eval_loss and objective.eval_dataset is None:
        raise TrainingStopped("lr_scheduler_type reduce_lr_on_plateau steps on the eval loss, but this run has no evaluation "
                              "set: give validation data (or a validation_split_percentage > 0) or choose another scheduler.")

    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.torch_compile:
        model = torch.compile(model, dynamic=True)
    state = _State()
    if run.resume is not None:
        state = _resume(accelerator, run.resume, cfg, W, scheduler, objective)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "hfssl_config.yaml")
        trim_log(out / LOG_FILE, state.step)
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
                data_iter = _epoch_iterator(objective, cfg, state, W, A, rank, total_steps, steps_per_epoch)
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

            # Global number of targets in this update: one all-reduce before any backward.
            local = torch.tensor([sum(b["num_targets"] for b in micro), sum(b["num_inputs"] for b in micro)], dtype=torch.float64, device=accelerator.device)
            totals = accelerator.reduce(local, "sum")
            n_targets, n_inputs = totals[0].item(), totals[1].item()  # note: CPU-GPU sync point, once per update

            loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float32)
            metric_sums: dict[str, torch.Tensor] = {}
            model.train()
            for a, batch in enumerate(micro):
                inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                torch.manual_seed(batch["seed"])  # dropout / Gumbel noise as a function of batch position
                sync = contextlib.nullcontext() if a == A - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    outputs = model(**inputs)
                    # DDP averages gradients over W processes: scale by W so the result is sum / n_targets.
                    scale = W / max(n_targets, 1.0)
                    accelerator.backward(outputs["loss_sum"] * scale)
                loss_sum += outputs["loss_sum"].detach().float()
                for k, v in outputs.items():
                    if k != "loss_sum":
                        metric_sums[k] = metric_sums.get(k, 0) + v.detach().float() * batch["num_targets"]

            loss = (accelerator.reduce(loss_sum, "sum") / max(n_targets, 1.0)).item()
            grad_norm = None
            finite = math.isfinite(loss) and n_targets > 0
            if finite:  # max_grad_norm 0: measure the norm (logged, checked) without clipping
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf")))
                finite = math.isfinite(grad_norm)
            if finite:
                optimizer.step()
                if not on_eval_loss:
                    scheduler.step()
                state.bad_in_a_row = 0
            else:
                ids = sorted(i for b in micro for i in b["sample_ids"])
                state.bad_in_a_row += 1
                state.skipped_updates.append({"step": state.step + 1, "loss": loss, "grad_norm": grad_norm, "sample_ids": ids[:64]})
                logger.warning("Update %d skipped: non-finite loss/gradient (loss=%s, grad_norm=%s, %d targets); samples %s",
                               state.step + 1, loss, grad_norm, n_targets, ids[:64])
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            state.inputs_seen += n_inputs
            state.targets_seen += int(n_targets)
            extra = objective.on_update(state.step, total_steps) or {}

            metrics = {k: (accelerator.reduce(v, "sum") / max(n_targets, 1.0)).item() for k, v in sorted(metric_sums.items())}
            now = time.perf_counter()
            row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm, "num_targets": int(n_targets), **metrics, **extra,
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
                problem = objective.check_health(window) if hasattr(objective, "check_health") else None
            except RollbackRequested as request:
                if state.rollbacks >= cfg.max_rollbacks:
                    raise TrainingStopped(f"{request} Already rolled back {state.rollbacks} times (max_rollbacks); stopping.") from None
                logger.warning("%s Rolling back to %s with fresh masks and noise.", request, request.checkpoint)
                rollbacks = state.rollbacks + 1
                state = _resume(accelerator, Path(request.checkpoint), cfg, W, scheduler, objective)
                state.rollbacks = rollbacks
                if accelerator.is_main_process:
                    trim_log(log_path, state.step)
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
                result = _evaluate_and_log(accelerator, model, objective, cfg, state.step, log_path)
                if on_eval_loss:
                    scheduler.step(result["eval_loss"])
            if (cfg.save_steps and state.step % cfg.save_steps == 0) or stop_requested["flag"]:
                save_checkpoint(accelerator, out, state.step, _trainer_state(state, cfg, W, scheduler, objective),
                                cfg.save_total_limit, run.run_id)
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
    _refuse_non_finite(accelerator, objective.model, out)
    if accelerator.is_main_process:
        def write(folder: str) -> None:
            objective.save_pretrained(folder, summary)
            (Path(folder) / "train_results.json").write_text(json.dumps(summary, indent=1))

        save_final(write, out)
        from hfssl.plots import plot_training_curves

        plot_training_curves(log_path, out / "training_curves.png", title=f"{objective.name}: {out.name}")
    # The caller ends the run (accelerator.end_training()): it may still evaluate across processes.
    return summary


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, objective: Objective, cfg: TrainingArguments) -> dict[str, float]:
    """Loss (sum / targets) and metrics over the eval set with fixed masks (same every evaluation)."""
    W, rank = accelerator.num_processes, accelerator.process_index
    plan = objective.eval_plan()
    if cfg.max_eval_batches:
        plan = plan[: cfg.max_eval_batches]
    mine = list(range(rank, len(plan), W))
    keys = [_Key(batch_seed(cfg.seed, -1, g), 1.0, g) for g in mine]
    loader = _loader(objective.eval_dataset, [plan[g] for g in mine], keys, objective.collator, 0)
    # The unwrapped module: a DDP forward would wait for processes that have no batch left.
    model = accelerator.unwrap_model(model).eval()
    sums: dict[str, torch.Tensor] = {}
    n = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        inputs = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        torch.manual_seed(batch["seed"])
        with accelerator.autocast():
            outputs = model(**inputs)
        for k, v in outputs.items():
            w = 1.0 if k == "loss_sum" else batch["num_targets"]
            sums[k] = sums.get(k, 0) + v.detach().double() * w
        n += batch["num_targets"]
    n_total = accelerator.reduce(n, "sum").item()
    names = sorted({k for ks in gather_object([list(sums)]) for k in ks}) if W > 1 else sorted(sums)
    result = {}
    for k in names:
        total = accelerator.reduce(sums.get(k, torch.zeros((), dtype=torch.float64, device=accelerator.device)), "sum").item()
        result["eval_loss" if k == "loss_sum" else f"eval_{k}"] = total / max(n_total, 1.0)
    result["eval_targets"] = int(n_total)
    return objective.eval_summary(result)


def _evaluate_and_log(accelerator, model, objective, cfg, step, log_path) -> dict:
    result = evaluate(accelerator, model, objective, cfg)
    if accelerator.is_main_process:
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        if cfg.trackers:
            accelerator.log({k.replace("eval_", "eval/"): v for k, v in result.items()}, step=step)
    return result


def _epoch_iterator(objective, cfg, state: _State, W, A, rank, total_steps, steps_per_epoch):
    """This process's micro-batches for the rest of the current epoch, each with its seed."""
    def progress(g):
        return (state.epoch * steps_per_epoch + g // (W * A)) / max(total_steps, 1)

    if not hasattr(objective.train_dataset, "__len__"):  # streaming: already sharded by process
        return _stream_iterator(objective, cfg, state, W, A, rank, total_steps)
    plan = objective.batch_plan(state.epoch, cfg.seed)
    usable = (len(plan) // (W * A)) * (W * A)
    start = state.step_in_epoch * W * A
    mine = [g for g in range(start + rank, usable, W)]
    keys = [_Key(batch_seed(cfg.seed, state.epoch, g, state.rollbacks), progress(g), g) for g in mine]
    return iter(_loader(objective.train_dataset, [plan[g] for g in mine], keys, objective.collator, cfg.dataloader_num_workers))


def _stream_iterator(objective, cfg, state, W, A, rank, total_steps):
    """Streaming: examples come from the process's shard of the stream in order; micro-batch
    global index g = step_in_epoch*W*A + a*W + rank keeps seeds identical to the map-style layout."""
    ds = objective.train_dataset
    bs = cfg.per_device_train_batch_size
    epoch, epoch_start = state.epoch, state.step - state.step_in_epoch  # fixed for this pass over the stream
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    g = state.step_in_epoch * W * A + rank
    rows: list = []
    # Resume re-reads this process's shard up to the saved position (a stream cannot seek).
    for ex in itertools.islice(ds, state.step_in_epoch * A * bs, None):
        rows.append(ex)
        if len(rows) == bs:
            seed = batch_seed(cfg.seed, epoch, g, state.rollbacks)
            batch = objective.collator(rows, seed=seed, progress=(epoch_start + g // (W * A)) / max(total_steps, 1))
            batch["sample_ids"] = list(range(g * bs, (g + 1) * bs))
            batch["seed"] = seed
            rows = []
            g += W
            yield batch


def _trainer_state(state: _State, cfg, W: int, scheduler, objective) -> dict:
    return {**state.__dict__, "world_size": W, "global_batch_size": cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps,
            "per_device_train_batch_size": cfg.per_device_train_batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "seed": cfg.seed,
            "scheduler": scheduler.state_dict(), "objective": objective.state_dict()}


def _resume(accelerator, path: Path, cfg, W, scheduler, objective) -> _State:
    """Load checkpoint `path` (verified again here: a rollback target was never checked) and return its loop state."""
    saved = verify_on_main(accelerator, path)
    global_batch = cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps
    if saved["global_batch_size"] != global_batch:
        raise TrainingStopped(
            f"Checkpoint {path} was written with global batch size {saved['global_batch_size']} (per device "
            f"{saved['per_device_train_batch_size']} x {saved['world_size']} processes x {saved['gradient_accumulation_steps']} "
            f"accumulation); this run has {global_batch}. Exact resume needs the same global batch: change "
            f"per_device_train_batch_size/gradient_accumulation_steps to match.")
    if saved["seed"] != cfg.seed:
        raise TrainingStopped(f"Checkpoint {path} was written with seed {saved['seed']}; this run has seed {cfg.seed}. "
                              f"Exact resume needs the same seed: set --seed {saved['seed']}.")
    if saved["world_size"] != W:
        logger.warning("Resuming %s on %d processes (saved with %d): same global batch, so the data order and masks are unchanged.",
                       path, W, saved["world_size"])
    # Model weights load from safetensors; optimizer and RNG states with weights_only (and were
    # loaded that way by verify_checkpoint first): nothing in a checkpoint can run code.
    accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    scheduler.load_state_dict(saved["scheduler"])
    objective.load_state_dict(saved["objective"])
    fields = {k: v for k, v in saved.items() if k in _State.__dataclass_fields__}
    logger.info("Resumed from %s at step %d.", path, saved["step"])
    return _State(**fields)


def _refuse_non_finite(accelerator, model, out: Path) -> None:
    """Never save a final model with NaN/inf weights: stop (exit 2) naming them and the last checkpoint."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    count = accelerator.reduce(torch.tensor([float(len(bad))], device=accelerator.device), "sum").item()
    if count:
        saved = list_checkpoints(out)
        raise TrainingStopped(
            f"The final weights are not finite ({', '.join(bad[:5]) or 'on another process'}{' ...' if len(bad) > 5 else ''}): "
            f"the model was not saved. Last checkpoint: {saved[-1] if saved else 'none'}. Lower the learning rate or "
            f"max_grad_norm, use bf16 instead of fp16, or check the data.")


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
