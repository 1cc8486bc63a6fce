"""Evaluation inside the loop: loss and metrics over the eval set with fixed masks (the same at every
evaluation, so curves compare), each loss term divided by its own target count."""

from __future__ import annotations

import json
import logging

import torch

from hfssl.data.batching import eval_batches
from hfssl.loss_terms import accumulate, agreed, as_terms, per_target

logger = logging.getLogger(__name__)


def bare_module(accelerator, model) -> torch.nn.Module:
    """The module inside the DDP and torch.compile wrappers, leaving them as they are. (unwrap_model's default keeps
    a compiled wrapper by putting the bare module into it in place: the training model then lost DDP's no_sync
    after the first evaluation, and every micro-batch of an accumulated update all-reduced its gradients.)
    Evaluation runs uncompiled."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


@torch.no_grad()
def evaluate(accelerator, model, objective, cfg) -> dict[str, float]:
    """`eval_loss` (sum over terms of term sum / term targets), `eval_loss_<term>` with several terms,
    `eval_<metric>`, `eval_targets`; then the objective's `eval_summary`."""
    W, rank = accelerator.num_processes, accelerator.process_index
    # Without DDP's wrapper (its forward adds nothing here). FSDP2 shards the module in place: the
    # unwrapped module is still sharded, each forward gathers weights from all processes, so every
    # process runs the same number of batches (`eval_batches` pads; padding is left out of the sums).
    model = bare_module(accelerator, model).eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    for batch in eval_batches(objective, cfg, W, rank):
        inputs = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        torch.manual_seed(batch["seed"])
        with accelerator.autocast():
            outputs = model(**inputs)
        if batch["pad"]:
            continue
        n = as_terms(batch["num_targets"])
        accumulate(sums, outputs, n)
        for k, v in n.items():
            counts[k] = counts.get(k, 0.0) + v
    # Processes may hold different batches (or none): agree on the names before one all-reduce. Term
    # order matters (metrics without a term prefix are weighted by the first term): keep the collator's.
    names, terms = agreed(list(sums), W), agreed(list(counts), W)
    zero = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(torch.stack([torch.as_tensor(sums.get(k, zero), dtype=torch.float64, device=accelerator.device)
                                            for k in names] + [zero + counts.get(k, 0.0) for k in terms]), "sum").tolist()
    n_total = dict(zip(terms, total[len(names):]))
    empty = [k for k in terms if n_total[k] == 0]
    if terms and not empty:
        result = per_target(dict(zip(names, total[: len(names)])), n_total, prefix="eval_")
    else:
        # A term with no targets has no loss: per_target's max(count, 1) would report 0.0 (a perfect score,
        # perplexity 1). Report the loss as NaN (the plateau scheduler steps on it; NaN counts as no
        # improvement) and leave the metrics out.
        result = {"eval_loss": float("nan")}
        logger.warning("The evaluation set gave no targets%s: eval_loss is NaN and no metrics are reported. Give a larger "
                       "validation set (validation_file, or a higher validation_split_percentage).",
                       f" for {', '.join(empty)}" if len(terms) > 1 else "")
    result["eval_targets"] = int(n_total[terms[0]]) if terms else 0
    return objective.eval_summary(result)


def evaluate_and_log(accelerator, model, objective, cfg, step: int, log_path) -> dict:
    """Evaluate, append the result to the training log (main process), send it to the trackers."""
    result = evaluate(accelerator, model, objective, cfg)
    if accelerator.is_main_process:
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, **result}) + "\n")
        logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        if cfg.trackers:
            accelerator.log({k.replace("eval_", "eval/"): v for k, v in result.items()}, step=step)
    return result
