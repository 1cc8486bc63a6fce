"""Predictions over a whole split with the accelerator, then metrics and result files.

Each process runs every W-th batch; per-example outputs are gathered and put back in dataset
order, so the metrics are those of the full split whatever the number of processes. Every process
runs the same number of batches (one short of the others repeats the first and drops its outputs):
an FSDP-sharded model runs each forward on all processes together.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from hfssl.finetune.tasks import plan_for


@torch.no_grad()
def predict(accelerator, model, dataset, collator, batch_size: int, plan=None, distributed: bool = True) -> tuple[float, int, list]:
    """(loss sum, labeled examples, per-example outputs in dataset order) over `dataset`.

    `plan`: a function dataset -> batches of indices (default: consecutive batches of batch_size).
    `distributed=False`: this process does every batch alone (no collective calls), e.g. in a
    single-process run or where the other processes are not evaluating."""
    from accelerate.utils import gather_object

    W, rank = (accelerator.num_processes, accelerator.process_index) if distributed else (1, 0)
    plan = plan(dataset) if callable(plan) else plan_for(dataset, batch_size)
    model.eval()
    device = accelerator.device
    mine: list[tuple[int, np.ndarray]] = []
    loss_sum, labeled = 0.0, 0
    turns = list(range(rank, len(plan), W))
    for g in turns + [None] * (-(-len(plan) // W) - len(turns)):  # None: padding, outputs dropped
        rows = dataset.__getitems__(plan[0 if g is None else g])
        batch = collator(rows, seed=0, progress=1.0)
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with accelerator.autocast():
            loss, outputs = model.predict_step(**inputs)
        if g is None:
            continue
        if loss is not None:
            loss_sum += float(loss)
            labeled += len(rows)
        mine.extend(zip(plan[g], outputs))
    if W > 1:
        mine = [item for part in gather_object([mine]) for item in part]
        totals = gather_object([(loss_sum, labeled)])
        loss_sum, labeled = sum(t[0] for t in totals), sum(t[1] for t in totals)
    ordered = [out for _, out in sorted(mine, key=lambda item: item[0])]
    return loss_sum, labeled, ordered


def evaluate_split(accelerator, task, split: str, distributed: bool = True) -> tuple[dict, list[dict]]:
    """Metrics ('{prefix}_loss', '{prefix}_accuracy', ...) and prediction rows for 'validation' or 'test'."""
    from torch.distributed.fsdp import FSDPModule

    dataset = task.eval_dataset if split == "validation" else task.test_dataset
    model = task.model if isinstance(task.model, FSDPModule) else task.model.to(accelerator.device)  # FSDP placed it
    loss_sum, labeled, outputs = predict(accelerator, model, dataset, task.collator, task.cfg.per_device_eval_batch_size,
                                         task.eval_batches, distributed)
    metrics, rows = task.evaluate_outputs(split, outputs)
    prefix = "eval" if split == "validation" else "test"
    result = {}
    if labeled:
        result[f"{prefix}_loss"] = loss_sum / labeled
    result.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    result[f"{prefix}_samples"] = len(dataset)
    return result, rows


def write_split_outputs(output_dir: str, task, split: str, result: dict, rows: list[dict]) -> None:
    """{prefix}_results.json, {prefix}_predictions.jsonl and, for single-label classification,
    {prefix}_confusion_matrix.png."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "eval" if split == "validation" else "test"
    report = task.probe_report()
    payload = {**result, **({"probe": report} if report else {})}
    (out / f"{prefix}_results.json").write_text(json.dumps(_finite(payload), indent=1))
    with open(out / f"{prefix}_predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    cm = task.last_confusion
    if cm is not None and f"{prefix}_accuracy" in result:
        from hfssl.finetune.metrics import plot_confusion_matrix

        plot_confusion_matrix(cm, task.labels.names, out / f"{prefix}_confusion_matrix.png",
                              title=f"{split}: accuracy {result[f'{prefix}_accuracy']:.3f}")
        task.last_confusion = None


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
