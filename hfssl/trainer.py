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
* Checkpoints carry no code: the scheduler's and the objective's state go into trainer_state.json
  (`Objective.state_dict` must be JSON), the rest through Accelerate (`hfssl.checkpointing`).
  output_dir is locked and checked by `hfssl.run_dir` before the run starts.
* Several processes, nodes and precisions (`hfssl.distributed`): DDP or FSDP2 through Accelerate; the
  encoders' LayerDrop keeps a constant graph (`hfssl.layerdrop`); fp16 overflows are the loss
  scaler's business (the step is skipped and the scale lowered), never counted as bad updates.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hfssl.config import TrainingArguments, save_config
from hfssl.data.batching import Position, train_batches
from hfssl.distributed import full_weights, loss_scale, make_accelerator, sigterm_flag, wrap_transformer_blocks
from hfssl.errors import RollbackRequested, TrainingStopped
from hfssl.evaluate import evaluate_and_log
from hfssl.layerdrop import constant_graph_layerdrop
from hfssl.loop_state import LoopState, refuse_non_finite, resume_loop, save_loop_checkpoint
from hfssl.loss_terms import accumulate, as_terms, per_target, reduce_sums
from hfssl.objectives.base import Objective
from hfssl.run_dir import RunDir, close_run_dir, open_run_dir, save_final, trim_log
from hfssl.schedules import build_optimizer, build_scheduler, steps_on_eval_loss

logger = logging.getLogger(__name__)

LOG_FILE = "training_log.jsonl"
# fp16: a loss scale below this means the gradients are not finite at any scale (NaN in the model, not
# an overflow): stop instead of halving forever (fairseq's min_loss_scale).
MIN_LOSS_SCALE = 1e-4


# ----------------------------------------------------------------------------------- the loop

@dataclass
class _Run:
    """What one training run holds while it goes: built by `_setup`, advanced by the steps of `train`."""

    cfg: TrainingArguments
    objective: Objective
    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP/FSDP-wrapped, maybe compiled)
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: LoopState
    steps_per_epoch: int
    total_steps: int
    out: Path
    run_id: str
    on_eval_loss: bool  # the scheduler steps on the eval loss (reduce_lr_on_plateau), not per update
    data: Optional[Iterator[dict]] = None  # this process's micro-batches for the rest of the epoch
    window: list = field(default_factory=list)  # log rows since the last logging step
    t_last: float = 0.0  # end of the previous update (throughput excludes evaluation and checkpointing)
    sigterm: dict = field(default_factory=lambda: {"flag": False})  # this process got SIGTERM
    stopping: bool = False  # some process got SIGTERM (agreed by all at the start of an update)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE


def train(cfg: TrainingArguments, objective: Objective, accelerator: Optional[Accelerator] = None) -> dict:
    """Run training and final evaluation; save the model with `objective.save_pretrained`.

    Returns the summary (final eval metrics, steps, inputs seen). output_dir is opened (locked,
    checked) here unless the entry point already opened it. The caller ends the run
    (`accelerator.end_training()`): it may still evaluate across processes.
    """
    accelerator = accelerator or make_accelerator(cfg)
    run_dir = open_run_dir(cfg, accelerator)
    try:
        return _train(_setup(cfg, objective, accelerator, run_dir))
    finally:
        close_run_dir(run_dir)


def _train(run: "_Run") -> dict:
    """The loop: one optimizer update per iteration, until total_steps."""
    objective = run.objective
    bar = tqdm(total=run.total_steps, initial=run.state.step, disable=not run.accelerator.is_local_main_process,
               desc=objective.name, dynamic_ncols=True)
    with sigterm_flag(run.sigterm), contextlib.closing(bar):  # the bar closes on errors too: messages start on a new line
        while run.state.step < run.total_steps:
            micro = _next_update(run)  # this process's A micro-batches, or None at the end of an epoch
            if micro is None:
                _next_epoch(run)
                continue
            loss, metrics, n_targets, n_inputs = _forward_backward(run, micro)
            grad_norm = _optimizer_step(run, loss, n_targets, micro)  # or skip a non-finite update
            _record_update(run, loss, metrics, grad_norm, n_targets, n_inputs)
            bar.update(1)
            if _health_check(run):  # True: rolled back to an earlier checkpoint
                bar.reset(total=run.total_steps)
                bar.update(run.state.step)
                continue
            _report(run, bar)
            _evaluate_and_checkpoint(run)
            run.t_last = time.perf_counter()
    return _finish(run)


# ----------------------------------------------------------------------------------- the steps

def _setup(cfg, objective, accelerator, run_dir: RunDir) -> _Run:
    """Optimizer, epoch size and scheduler, Accelerate wrapping, resume, output folder, trackers."""
    W, A = accelerator.num_processes, cfg.gradient_accumulation_steps
    if cfg.gradient_checkpointing:
        objective.enable_gradient_checkpointing()
    constant_graph_layerdrop(objective.model)  # every parameter in every graph: DDP and FSDP need it
    wrap_transformer_blocks(accelerator, objective.model)
    optimizer = build_optimizer(cfg, objective.model, accelerator.device)
    if objective.streaming:
        steps_per_epoch = cfg.max_steps
    else:
        micro_batches = len(objective.batch_plan(0, cfg.seed))
        steps_per_epoch = micro_batches // (W * A)
        if steps_per_epoch == 0:
            raise TrainingStopped(
                f"The training set gives {micro_batches} micro-batches per epoch, fewer than one update needs "
                f"({W} processes x {A} accumulation steps). Lower the batch size or add data.")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    on_eval_loss = steps_on_eval_loss(scheduler)
    if on_eval_loss and objective.eval_dataset is None:
        raise TrainingStopped("lr_scheduler_type reduce_lr_on_plateau steps on the eval loss, but this run has no evaluation "
                              "set: give validation data (or a validation_split_percentage > 0) or choose another scheduler.")

    model, optimizer = accelerator.prepare(objective.model, optimizer)
    if cfg.torch_compile:
        # dynamic=None: shapes start static (the fastest kernels, CUDA-graph friendly); a dimension that
        # changes (masked-token count, packed rows, padded length) is recompiled once, as a dynamic dimension.
        model = torch.compile(model, dynamic=None)
        if any(choice.startswith("torch_compile auto") for choice in cfg.auto_choices):
            # auto means "compiled where kernels can be built": a toolchain that is present but fails (a broken
            # compiler, missing OpenMP) makes torch fall back to eager with its warning, instead of ending the run.
            torch._dynamo.config.suppress_errors = True
    run = _Run(cfg, objective, accelerator, model, optimizer, scheduler, LoopState(), steps_per_epoch, total_steps,
               Path(cfg.output_dir), run_dir.run_id, on_eval_loss)
    if run_dir.resume is not None:
        run.state = resume_loop(run, run_dir.resume)
    if accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.out / "hfssl_config.yaml")
        trim_log(run.log_path, run.state.step)
    if cfg.trackers:
        accelerator.init_trackers(objective.name, config=_flat(cfg))
    run.t_last = time.perf_counter()
    return run


def _next_update(run: _Run) -> Optional[list[dict]]:
    """The next update's micro-batches for this process, or None when the epoch (or stream pass) ended."""
    cfg, state, A = run.cfg, run.state, run.cfg.gradient_accumulation_steps
    if run.data is None:
        mine = state.stream[run.accelerator.process_index] if state.stream else None
        state.stream = None  # a later epoch starts at the beginning of the stream
        pos = Position(state.epoch, state.step_in_epoch, state.step - state.step_in_epoch, state.rollbacks, mine)
        run.data = train_batches(run.objective, cfg, pos, run.world, run.accelerator.process_index, run.total_steps, run.steps_per_epoch)
    micro = [b for b in itertools.islice(run.data, A)]
    ended = len(micro) < A  # a partial update group is dropped
    if run.objective.streaming and run.world > 1:
        # Each process reads its own shard of the stream, and shards end at different updates:
        # agree first, so that no process waits alone in a collective for one that has moved on.
        ended = run.accelerator.reduce(torch.tensor([float(ended)], device=run.accelerator.device), "sum").item() > 0
    if not ended:
        return micro
    if run.objective.streaming and state.step_in_epoch == 0:
        raise TrainingStopped(
            f"The training stream gave no complete update: each process needs at least per_device_train_batch_size x "
            f"gradient_accumulation_steps = {cfg.per_device_train_batch_size * A} examples. Add data or lower them.")
    return None


def _next_epoch(run: _Run) -> None:
    """A finished epoch; a stream starts over from its beginning, like a map-style dataset."""
    run.state.epoch += 1
    run.state.step_in_epoch = 0
    run.data = None


def _forward_backward(run: _Run, micro: list[dict]):
    """Gradients of the update: every loss term divided by its global target count (counted over all
    micro-batches and processes before the first forward, one all-reduce, which also tells every
    process whether any got SIGTERM: all then checkpoint after this same update).

    Returns (loss, metrics incl. per-term losses, {term: global targets}, global inputs)."""
    accelerator, model, W = run.accelerator, run.model, run.world
    counts = [as_terms(b["num_targets"]) for b in micro]  # per micro-batch {term: targets}, collator's term order
    names = list(counts[0])
    local = [float(sum(c[k] for c in counts)) for k in names] + [float(sum(b["num_inputs"] for b in micro)), float(run.sigterm["flag"])]
    # One process: the collator's counts are already global and the stop flag is its own; the round trip
    # through the device would wait for the GPU to finish the previous update. Several: one all-reduce
    # (note: CPU-GPU sync point, once per update) that also tells every process whether any got SIGTERM.
    totals = local if W == 1 else accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device), "sum").tolist()
    n_targets, n_inputs = dict(zip(names, totals[:-2])), totals[-2]
    run.stopping = totals[-1] > 0
    # DDP averages gradients over W processes: scale by W so each term becomes sum / its global count.
    scales = {k: W / max(n, 1.0) for k, n in n_targets.items()}
    sums: dict[str, torch.Tensor] = {}
    model.train()
    for a, batch in enumerate(micro):
        inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        torch.manual_seed(batch["seed"])  # dropout / sampling noise as a function of batch position
        sync = contextlib.nullcontext() if a == len(micro) - 1 else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            outputs = model(**inputs)
            terms = as_terms(outputs["loss_sum"])
            accelerator.backward(sum(terms[k] * scales[k] for k in names))
        accumulate(sums, outputs, counts[a])
    metrics = per_target(reduce_sums(accelerator, sums), n_targets)
    loss = metrics.pop("loss")
    if len(names) > 1:
        metrics.update({f"num_{k}_targets": int(n) for k, n in n_targets.items()})
    return loss, metrics, n_targets, n_inputs


def _optimizer_step(run: _Run, loss: float, n_targets: dict, micro: list[dict]) -> Optional[float]:
    """Clip and step; returns the gradient norm (None when not measured).

    fp16 (a loss scaler): the optimizer is always stepped, so the scaler decides. With gradients that
    overflowed at this scale it skips the update and lowers the scale (`scaler.update` always runs):
    logged as an overflow, the scheduler does not step, it is not a bad update. Otherwise a non-finite
    loss or gradient norm, or an update with no targets, skips the update (no weight changes), reported
    with its reason and sample ids; max_bad_steps in a row stop the run."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    grad_norm = None
    empty = sum(n_targets.values()) == 0  # nothing to predict (e.g. nothing masked): no gradient, skipped too
    finite = math.isfinite(loss) and not empty
    if finite:  # max_grad_norm 0: measure the norm (logged, checked) without clipping
        grad_norm = float(accelerator.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm or float("inf")))
        finite = math.isfinite(grad_norm) or accelerator.scaler is not None
    if finite:
        scale = loss_scale(accelerator)
        run.optimizer.step()  # with a scaler: scaler.step (skipped on inf/NaN gradients) + scaler.update
        # An overflow is read from the scale, which `scaler.update` lowers only then. Accelerate's
        # `optimizer_step_was_skipped` cannot see it with a fused AdamW: the scaler then always calls
        # step and the kernel itself skips the update (its `found_inf` argument).
        if scale is not None and loss_scale(accelerator) < scale:
            _overflow(run)
            grad_norm = None  # measured at a scale that overflowed: says nothing
        else:
            if not run.on_eval_loss:
                run.scheduler.step()
            state.bad_in_a_row = 0
    else:
        ids = sorted(i for b in micro for i in b["sample_ids"])
        state.bad_in_a_row += 1
        reason = "no targets" if empty else "non-finite loss/gradient"
        state.skipped_updates.append({"step": state.step + 1, "loss": loss, "grad_norm": grad_norm, "sample_ids": ids[:64],
                                      "reason": reason})
        logger.warning("Update %d skipped: %s (loss=%s, grad_norm=%s, %d targets); samples %s",
                       state.step + 1, reason, loss, grad_norm, int(sum(n_targets.values())), ids[:64])
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _overflow(run: _Run) -> None:
    """An fp16 update the loss scaler skipped: count and log it; stop if the scale has collapsed."""
    run.state.overflows += 1
    scale = loss_scale(run.accelerator)
    logger.info("Update %d: fp16 overflow, scale now %g (the update was skipped).", run.state.step + 1, scale)
    if scale < MIN_LOSS_SCALE:
        raise TrainingStopped(
            f"The fp16 loss scale fell to {scale:g} after {run.state.overflows} overflows (last at update {run.state.step + 1}): "
            f"the gradients are not finite at any scale. Use bf16 (--mixed_precision bf16) or fp32, lower the learning "
            f"rate, or check the data; the last checkpoint is in {run.out}.")


def _record_update(run: _Run, loss, metrics, grad_norm, n_targets, n_inputs) -> None:
    """Advance the counters and the objective's schedules; append the update's row to the log."""
    state, first = run.state, next(iter(n_targets))
    state.step += 1
    state.step_in_epoch += 1
    state.inputs_seen += n_inputs
    state.targets_seen += int(n_targets[first])
    extra = run.objective.on_update(state.step, run.total_steps)
    scale = loss_scale(run.accelerator)
    row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
           "grad_norm": grad_norm, "num_targets": int(n_targets[first]), **metrics, **extra,
           **({"loss_scale": scale} if scale is not None else {}),
           f"{run.objective.input_unit}_per_second": n_inputs / (time.perf_counter() - run.t_last), "time": round(time.time(), 3)}
    run.window.append(row)
    if run.accelerator.is_main_process:
        with open(run.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _health_check(run: _Run) -> bool:
    """Stop after max_bad_steps non-finite updates in a row; then the objective's health check: stop
    with its reason, or roll back to the checkpoint it names (with fresh masks and noise; returns True)."""
    state = run.state
    if state.bad_in_a_row >= run.cfg.max_bad_steps:
        recent = state.skipped_updates[-state.bad_in_a_row:]
        if all(u.get("reason") == "no targets" for u in recent):
            raise TrainingStopped(
                f"{state.bad_in_a_row} updates in a row had no targets (nothing to predict in their batches; last at step "
                f"{state.step}, samples {recent[-1]['sample_ids']}). Check the masking settings against the examples' "
                f"lengths (mlm_probability; mask_time_prob / mask_time_length / mask_time_min_masks for short clips) "
                f"or the data; the last checkpoint is in {run.out}.")
        what = "had a non-finite loss or gradient" if all(u.get("reason") != "no targets" for u in recent) else \
            "were skipped (a non-finite loss or gradient, or no targets)"
        raise TrainingStopped(
            f"{state.bad_in_a_row} updates in a row {what} (last at step {state.step}; samples {recent[-1]['sample_ids']}). "
            f"Lower the learning rate, use bf16 instead of fp16, or check the data; the last checkpoint is in {run.out}.")
    try:
        problem = run.objective.check_health(run.window)
    except RollbackRequested as request:
        if state.rollbacks >= run.cfg.max_rollbacks:
            raise TrainingStopped(f"{request} Already rolled back {state.rollbacks} times (max_rollbacks); stopping.") from None
        logger.warning("%s Rolling back to %s with fresh masks and noise.", request, request.checkpoint)
        rollbacks = state.rollbacks + 1
        run.state = resume_loop(run, Path(request.checkpoint))
        run.state.rollbacks = rollbacks
        if run.accelerator.is_main_process:
            trim_log(run.log_path, run.state.step)
        run.data, run.window = None, []
        return True
    if problem:
        raise TrainingStopped(problem)
    return False


def _report(run: _Run, bar) -> None:
    """Every logging_steps: averages of the window to the progress bar and the trackers."""
    step = run.state.step
    if step % run.cfg.logging_steps and step != run.total_steps:
        return
    avg = _average(run.window)
    run.window.clear()
    bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items() if k in ("loss", "accuracy", "lr")})
    if run.cfg.trackers:
        run.accelerator.log({f"train/{k}": v for k, v in avg.items()}, step=step)


def _evaluate_and_checkpoint(run: _Run) -> None:
    """Periodic evaluation and checkpoints; after SIGTERM (to any process), a checkpoint and exit status 143."""
    cfg, step = run.cfg, run.state.step
    if cfg.eval_steps and step % cfg.eval_steps == 0 and step < run.total_steps and run.objective.eval_dataset is not None:
        result = evaluate_and_log(run.accelerator, run.model, run.objective, cfg, step, run.log_path)
        if run.on_eval_loss:
            run.scheduler.step(result["eval_loss"])
    if (cfg.save_steps and step % cfg.save_steps == 0) or run.stopping:
        save_loop_checkpoint(run)
    if run.stopping:
        logger.warning("SIGTERM: checkpoint-%d written; exiting with 143. Resume with --resume_from_checkpoint latest.", step)
        run.accelerator.end_training()
        raise SystemExit(143)


def _finish(run: _Run) -> dict:
    """Final evaluation; the main process saves the model, train_results.json and the curves."""
    accelerator, objective, state, out = run.accelerator, run.objective, run.state, run.out
    final_eval = {}
    if objective.eval_dataset is not None:
        final_eval = evaluate_and_log(accelerator, run.model, objective, run.cfg, state.step, run.log_path)
    summary = {"objective": objective.name, "steps": state.step, f"{objective.input_unit}_seen": state.inputs_seen,
               "targets_seen": state.targets_seen, "skipped_updates": len(state.skipped_updates),
               **({"overflow_updates": state.overflows} if accelerator.scaler is not None else {}), **final_eval}
    accelerator.wait_for_everyone()
    objective.model = accelerator.unwrap_model(run.model)  # FSDP2 shards in place: still sharded, still usable
    refuse_non_finite(accelerator, objective.model, out)
    with full_weights(accelerator, objective.model):  # FSDP: the full weights on the main process, for saving
        if accelerator.is_main_process:
            def write(folder: str) -> None:
                objective.save_pretrained(folder, summary)
                (Path(folder) / "train_results.json").write_text(json.dumps(summary, indent=1))

            save_final(write, out)  # written aside, then moved in: never a half-saved model
    if accelerator.is_main_process:
        from hfssl.plots import plot_training_curves

        plot_training_curves(run.log_path, out / "training_curves.png", title=f"{objective.name}: {out.name}")
    return summary


# ----------------------------------------------------------------------------------- setup helpers

def _average(rows: list[dict]) -> dict[str, float]:
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "time"}
    out = {}
    for k in sorted(keys):
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def _flat(cfg) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.__dict__.items()}
