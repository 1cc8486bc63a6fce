"""The loop's state and its checkpoints: what `hfssl.trainer` saves every save_steps and resumes from
(exactly, also on another number of processes with the same global batch), and the last check
before the final model is saved. `run` is the trainer's `_Run`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import gather_object

from hfssl.checkpointing import list_checkpoints, load_objective_tensors, save_checkpoint, set_aside_checkpoints_after, verify_on_main
from hfssl.distributed import is_fsdp, local
from hfssl.errors import TrainingStopped

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """The loop's counters: what a checkpoint's trainer_state.json holds besides the batch geometry."""

    step: int = 0  # optimizer updates done (including skipped non-finite ones and fp16 overflows)
    epoch: int = 0
    step_in_epoch: int = 0
    inputs_seen: float = 0.0  # tokens / audio seconds / examples
    targets_seen: int = 0
    bad_in_a_row: int = 0
    rollbacks: int = 0
    overflows: int = 0  # fp16 updates the loss scaler skipped
    skipped_updates: list = field(default_factory=list)
    stream: Optional[list] = None  # per-process stream positions read from a checkpoint; used once, then None


def save_loop_checkpoint(run) -> None:
    """checkpoint-<step>: trainer_state.json holds the loop counters, the batch geometry resume checks,
    the scheduler and the objective's plain values (JSON); the objective's tensors (e.g. an EMA teacher)
    go to safetensors. Nothing in a checkpoint can carry code."""
    cfg, W = run.cfg, run.world
    objective = run.objective.state_dict()
    tensors = {k: v for k, v in objective.items() if isinstance(v, torch.Tensor)}
    state = {**run.state.__dict__, "world_size": W, "sharded": is_fsdp(run.accelerator), "global_batch_size": cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps,
             "per_device_train_batch_size": cfg.per_device_train_batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
             "max_batch_seconds": getattr(cfg, "max_batch_seconds", None), "seed": cfg.seed, "scheduler": run.scheduler.state_dict(),
             "objective": {k: v for k, v in objective.items() if k not in tensors}}
    if run.objective.streaming:  # where each process's stream goes on (JSON), so that resuming seeks instead of re-reading
        mine = run.data.state_dict() if run.data is not None else None
        state["stream"] = gather_object([mine]) if W > 1 else [mine]
    save_checkpoint(run.accelerator, run.out, run.state.step, state, cfg.save_total_limit, run.run_id, tensors)


def resume_loop(run, path: Path) -> LoopState:
    """Load checkpoint `path` (verified again here: a rollback target was never checked) and return its loop state."""
    accelerator, cfg, W = run.accelerator, run.cfg, run.world
    saved = verify_on_main(accelerator, path)
    check_same_run_geometry(saved, path, cfg, W)
    if saved.get("sharded", False) != is_fsdp(accelerator):
        kinds = ("FSDP (sharded)", "DDP or one process")
        written, now = (kinds[0], kinds[1]) if saved.get("sharded", False) else (kinds[1], kinds[0])
        raise TrainingStopped(f"Checkpoint {path} was written under {written}; this run is under {now}, which cannot load it. "
                              f"Resume with the launch it was written with (see docs/distributed.md for exporting it).")
    if saved["world_size"] != W:
        same = ("not exactly: each process reads its own shard of the stream, so the examples from here on differ from "
                "an uninterrupted run's" if run.objective.streaming else
                "the same batches, masks, dropout and layer drops as an uninterrupted run; only float rounding differs "
                "(gradients are summed over processes and accumulation steps in another order). Per-process RNG states "
                "are not restored, and need not be: every micro-batch reseeds")
        logger.warning("Resuming %s on %d processes (saved with %d), same global batch: %s.", path, W, saved["world_size"], same)
    # Model weights load from safetensors; optimizer and RNG states with weights_only (and were
    # loaded that way by verify_checkpoint first): nothing in a checkpoint can run code.
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except RuntimeError as e:  # torch's load_state_dict: the model was built with other sizes than the checkpoint's
        first = next((line.strip() for line in str(e).splitlines() if "mismatch" in line or "key(s)" in line), None)
        if first is None:
            raise
        raise TrainingStopped(
            f"Checkpoint {path} holds a model of another shape than this run builds ({first}). Resume with the model "
            f"settings it was written with (config_overrides, model_type, vocab_size, max_seq_length, ...: the run's "
            f"hfssl_config.yaml in {path.parent} when it finished), or start a new run.") from None
    run.scheduler.load_state_dict(saved["scheduler"])
    run.objective.load_state_dict({**saved["objective"], **load_objective_tensors(path)})
    fields = {k: v for k, v in saved.items() if k in LoopState.__dataclass_fields__}
    if accelerator.is_main_process:  # only once loaded: a refused resume changes nothing
        set_aside_checkpoints_after(run.out, saved["step"])
    accelerator.wait_for_everyone()  # every process's health check then lists the same checkpoints (rollback targets)
    logger.info("Resumed from %s at step %d.", path, saved["step"])
    return LoopState(**fields)


def check_same_run_geometry(saved: dict, path: Path, cfg, W: int) -> None:
    """Exact resume needs the checkpoint's global batch (duration-bucketed batches: its max_batch_seconds, which
    then decides a batch instead of per_device_train_batch_size) and seed, and a streamed run its process count."""
    seconds = getattr(cfg, "max_batch_seconds", None)
    if "max_batch_seconds" in saved and saved["max_batch_seconds"] != seconds:  # older checkpoints did not record it
        raise TrainingStopped(
            f"Checkpoint {path} was written with max_batch_seconds {saved['max_batch_seconds']}; this run has {seconds}. "
            f"Exact resume replays the same duration-bucketed batches, which it decides: resume with --max_batch_seconds "
            f"{saved['max_batch_seconds']}.")
    if seconds is not None:  # per_device_train_batch_size plays no part; batches per update still must match
        if saved["world_size"] * saved["gradient_accumulation_steps"] != W * cfg.gradient_accumulation_steps:
            raise TrainingStopped(
                f"Checkpoint {path} was written with {saved['world_size']} processes x {saved['gradient_accumulation_steps']} "
                f"accumulation = {saved['world_size'] * saved['gradient_accumulation_steps']} batches per update; this run has "
                f"{W * cfg.gradient_accumulation_steps}. Exact resume needs the same: change gradient_accumulation_steps to match.")
    elif saved["global_batch_size"] != cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps:
        raise TrainingStopped(
            f"Checkpoint {path} was written with global batch size {saved['global_batch_size']} (per device "
            f"{saved['per_device_train_batch_size']} x {saved['world_size']} processes x {saved['gradient_accumulation_steps']} "
            f"accumulation); this run has {cfg.per_device_train_batch_size * W * cfg.gradient_accumulation_steps}. Exact "
            f"resume needs the same global batch: change "
            f"per_device_train_batch_size/gradient_accumulation_steps to match.")
    if saved["seed"] != cfg.seed:
        raise TrainingStopped(
            f"Checkpoint {path} was written with seed {saved['seed']}; this run has seed {cfg.seed}. Exact resume replays the "
            f"same data order, masks and dropout, which the seed decides: resume with --seed {saved['seed']}.")
    if any(saved.get("stream") or []) and saved["world_size"] != W:
        raise TrainingStopped(
            f"Checkpoint {path} streams its corpus over {saved['world_size']} processes, each reading its own part of the "
            f"stream; this run has {W}. Resume a streamed run on {saved['world_size']} processes.")


def refuse_non_finite(accelerator, model, out: Path) -> None:
    """Never save a final model with NaN/inf weights: stop (exit 2) naming them and the last checkpoint."""
    named = list(model.named_parameters())
    # One read-back for all tensors (FSDP: this process's shards), not one device sync per parameter.
    finite = torch.stack([torch.isfinite(local(p)).all().to(accelerator.device) for _, p in named]).tolist() if named else []
    bad = [name for (name, _), ok in zip(named, finite) if not ok]
    count = accelerator.reduce(torch.tensor([float(len(bad))], device=accelerator.device), "sum").item()
    if count:
        saved = list_checkpoints(out)
        raise TrainingStopped(
            f"The final weights are not finite ({', '.join(bad[:5]) or 'on another process'}{' ...' if len(bad) > 5 else ''}): "
            f"the model was not saved. Last checkpoint: {saved[-1] if saved else 'none'}. Lower the learning rate or "
            f"max_grad_norm, use bf16 instead of fp16, or check the data.")
