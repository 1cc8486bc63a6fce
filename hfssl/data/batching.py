"""From a dataset and a batch plan to the micro-batches one process trains on, each with its seed.

Randomness is a function of position: micro-batch `g` of epoch `e` gets seed f(seed, e, g), used for
its masks (in the collator) and for dropout/noise (the loop reseeds before its forward). Update `s`
of an epoch uses micro-batches s*W*A .. (s+1)*W*A-1 (W processes, A accumulation steps); process r
takes every W-th. So resuming skips by index, never by reading data, and 2 processes see the same
batches, masks and dropout as 1 process with gradient accumulation 2. A stream resumes at the
position saved with the checkpoint (`StreamBatches`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader


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


@dataclass(frozen=True)
class Position:
    """Where training stands: the loop's counters that decide which micro-batches come next."""

    epoch: int
    step_in_epoch: int  # updates already done in this epoch
    epoch_start_step: int  # updates done before this epoch began
    rollbacks: int = 0
    stream: Optional[dict] = None  # a seekable stream's saved position (this process's), if resuming one


def train_batches(objective, cfg, pos: Position, world: int, rank: int, total_steps: int,
                  steps_per_epoch: int) -> Iterator[dict]:
    """This process's micro-batches for the rest of the current epoch, collated, each with
    `sample_ids` (dataset indices) and `seed`."""
    W, A = world, cfg.gradient_accumulation_steps
    if objective.streaming:  # already sharded by process
        return StreamBatches(objective, cfg, pos, W, rank, total_steps)
    plan = objective.batch_plan(pos.epoch, cfg.seed)
    usable = (len(plan) // (W * A)) * (W * A)  # a partial last update is dropped
    mine = range(pos.step_in_epoch * W * A + rank, usable, W)
    keys = [_Key(batch_seed(cfg.seed, pos.epoch, g, pos.rollbacks),
                 (pos.epoch * steps_per_epoch + g // (W * A)) / max(total_steps, 1)) for g in mine]
    return iter(_loader(objective.train_dataset, [plan[g] for g in mine], keys, objective.collator, cfg.dataloader_num_workers))


def eval_batches(objective, cfg, world: int, rank: int) -> DataLoader:
    """This process's share of the evaluation batches (every W-th), with fixed seeds (epoch -1).

    Every process gets the same number of batches: one short of the others runs the plan's first batch
    again with `pad` True, to be left out of the sums (an FSDP-sharded model runs each forward on all
    processes together, so a process with nothing left would leave the others waiting)."""
    plan = objective.eval_plan()
    if cfg.max_eval_batches:
        plan = plan[: cfg.max_eval_batches]
    mine = list(range(rank, len(plan), world))
    pads = -(-len(plan) // world) - len(mine)
    keys = [_Key(batch_seed(cfg.seed, -1, g), 1.0) for g in mine] + [_Key(batch_seed(cfg.seed, -1, 0), 1.0, pad=True)] * pads
    return _loader(objective.eval_dataset, [plan[g] for g in mine] + [plan[0]] * pads, keys, objective.collator, 0)


@runtime_checkable
class SeekableStream(Protocol):
    """A stream that can say where it stands and start there again (`datasets.IterableDataset`,
    `hfssl.data.text.stream.TextStream`): state_dict() after an example gives the position of the
    next one, as plain JSON; load_state_dict(state) makes the next iteration start there (None: at
    the beginning)."""

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Optional[dict]) -> None: ...


class StreamBatches:
    """Streaming: examples come from the process's shard of the stream in order; micro-batch global
    index g = step_in_epoch*W*A + a*W + rank keeps seeds identical to the map-style layout.

    A seekable stream starts at `pos.stream` (saved by the loop at the checkpoint); any other stream,
    or a checkpoint without a saved position, is read from its start up to the position and the
    examples before it are thrown away. `state_dict()` is the position after the last micro-batch."""

    def __init__(self, objective, cfg, pos: Position, W: int, rank: int, total_steps: int):
        self.ds = objective.train_dataset
        self.seekable = isinstance(self.ds, SeekableStream)
        bs, A = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        skip = pos.step_in_epoch * A * bs
        if self.seekable:
            self.ds.set_epoch(pos.epoch)
            self.ds.load_state_dict(pos.stream)
            if pos.stream is not None:
                skip = 0
        self._batches = self._generate(objective, cfg, pos, W, rank, total_steps, skip)

    def __iter__(self) -> "StreamBatches":
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def state_dict(self) -> Optional[dict]:
        """Where the next micro-batch starts (None for a stream that cannot seek)."""
        return self.ds.state_dict() if self.seekable else None

    def _generate(self, objective, cfg, pos: Position, W: int, rank: int, total_steps: int, skip: int) -> Iterator[dict]:
        bs, A = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        g = pos.step_in_epoch * W * A + rank
        rows: list = []
        for ex in itertools.islice(self.ds, skip, None):
            rows.append(ex)
            if len(rows) == bs:
                seed = batch_seed(cfg.seed, pos.epoch, g, pos.rollbacks)
                batch = objective.collator(rows, seed=seed, progress=(pos.epoch_start_step + g // (W * A)) / max(total_steps, 1))
                batch["sample_ids"] = list(range(g * bs, (g + 1) * bs))
                batch["seed"] = seed
                rows = []
                g += W
                yield batch


# ----------------------------------------------------------------------------------- DataLoader plumbing

@dataclass(frozen=True)
class _Key:
    seed: int
    progress: float
    pad: bool = False  # an evaluation batch run only to keep the processes in step


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


class _Collate:
    """collate_fn: rows of one micro-batch -> the collator's batch + `sample_ids` + `seed` (picklable
    for DataLoader workers)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, item):
        key, rows, indices = item
        batch = self.collator(rows, seed=key.seed, progress=key.progress)
        batch["sample_ids"] = indices
        batch["seed"] = key.seed
        batch["pad"] = key.pad
        return batch


def _loader(dataset, batches: list[list[int]], keys: list[_Key], collator, num_workers: int) -> DataLoader:
    sampler = [[(k, i) for i in b] for k, b in zip(keys, batches)]
    return DataLoader(_Keyed(dataset), batch_sampler=sampler, collate_fn=_Collate(collator),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available())
