"""Fine-tune one model on one task: build the task, run the shared loop, evaluate, write the card.

Used by `run_finetune.py` (`hfssl.finetune.run`) and by the payoff report (`hfssl.finetune.payoff`),
which fine-tunes a pretrained model and the same architecture from random init.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

logger = logging.getLogger("hfssl")

TASK_CLASSES = {
    "text-classification": "hfssl.finetune.text_classification:TextClassificationTask",
    "audio-classification": "hfssl.finetune.speech:AudioClassificationTask",
    "speech-recognition-ctc": "hfssl.finetune.ctc:CTCTask",
}
PIPELINE_TAGS = {"text-classification": "text-classification", "audio-classification": "audio-classification",
                 "speech-recognition-ctc": "automatic-speech-recognition"}
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "Macro F1", "matthews_correlation": "Matthews correlation", "wer": "WER", "cer": "CER"}


def build_task(cfg, accelerator=None):
    cfg.check_data_sources()
    module, name = TASK_CLASSES[cfg.task].split(":")
    return getattr(importlib.import_module(module), name)(cfg, accelerator)


def finetune(cfg) -> dict | None:
    """Train (unless do_train is false), evaluate on validation and test, write the result files.

    Returns the results on the main process (None on the others). Raises ConfigError/DataError
    for bad input before any training.
    """
    from hfssl.run_dir import close_run_dir, open_run_dir
    from hfssl.distributed import end_processes, make_accelerator

    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        logging.getLogger("hfssl").setLevel(logging.WARNING)
    run_dir = open_run_dir(cfg, accelerator, train=cfg.do_train)  # locked until the last result file is written
    try:
        summary, task, results = _train_and_evaluate(cfg, accelerator)
        if accelerator.is_main_process:
            report = task.probe_report()
            if report:
                results["probe_layer_weights"] = report["layer_weights"]
            if cfg.do_train:
                write_card(cfg, task, {**summary, **results})
        del task  # the model holds the process group (see end_processes)
    finally:
        close_run_dir(run_dir)
    end_processes(accelerator)
    return results if accelerator.is_main_process else None


def _train_and_evaluate(cfg, accelerator) -> tuple[dict, object, dict]:
    from accelerate.utils import set_seed

    from hfssl.distributed import is_fsdp
    from hfssl.finetune.evaluation import evaluate_split, write_split_outputs
    from hfssl.trainer import train

    if cfg.probe and is_fsdp(accelerator):
        from hfssl.errors import ConfigError

        raise ConfigError("probe: a frozen-upstream probe trains a few thousand parameters, which FSDP has no reason to "
                          "shard (and its layer weights are read on one process): run it with DDP or on one GPU.")
    set_seed(cfg.seed)  # head / from-scratch initialization
    task = build_task(cfg, accelerator)
    summary = train(cfg, task, accelerator) if cfg.do_train else {}
    if is_fsdp(accelerator) and cfg.do_train:
        from torch.distributed.fsdp import register_fsdp_forward_method

        # Evaluation calls predict_step, not forward: under FSDP it must gather the sharded weights too.
        register_fsdp_forward_method(task.model, "predict_step")
    # Evaluation splits the batches over the processes (the same number per process).
    distributed = accelerator.num_processes > 1
    results = {"train_samples": len(task.train_dataset)} if task.train_dataset is not None else {}
    results.update(task.extra_results())
    for split in ("validation", "test"):
        dataset = task.eval_dataset if split == "validation" else task.test_dataset
        if dataset is None:
            continue
        result, rows = evaluate_split(accelerator, task, split, distributed)
        if accelerator.is_main_process:
            write_split_outputs(cfg.output_dir, task, split, result, rows)
        results.update(result)
    accelerator.wait_for_everyone()
    return summary, task, results


def write_card(cfg, task, results: dict) -> None:
    from hfssl.hub import write_model_card

    source = cfg.model_name_or_path or f"{cfg.config_name} (same architecture, random init)"
    data = cfg.dataset_name or cfg.train_file or cfg.train_dir
    metrics = []
    for prefix, split in (("eval", "validation"), ("test", "test")):
        for key, pretty in METRIC_NAMES.items():
            if f"{prefix}_{key}" in results and results[f"{prefix}_{key}"] is not None:
                metrics.append((split, {"type": key, "value": round(float(results[f"{prefix}_{key}"]), 4), "name": f"{pretty} ({split})"}))
    model_index = None
    if metrics:
        name = Path(cfg.output_dir).resolve().name
        # Local files: name the data by its folder (train.csv in data/topics/ -> "topics").
        dataset_name = cfg.dataset_name or (Path(data).parent.name if Path(data).is_file() else Path(data).name)
        by_split: dict[str, list] = {}
        for split, m in metrics:
            by_split.setdefault(split, []).append(m)
        model_index = [{"name": name, "results": [
            {"task": {"type": PIPELINE_TAGS[cfg.task], "name": cfg.task},
             "dataset": {"name": dataset_name, "type": cfg.dataset_name or "local", "split": split}, "metrics": ms}
            for split, ms in by_split.items()]}]
    details = {"Task": cfg.task, "Base": source, "Data": str(data),
               "Training examples": str(len(task.train_dataset) if task.train_dataset is not None else 0)}
    if cfg.label_fraction < 1:
        details["Label budget"] = f"{cfg.label_fraction:g} of the training set"
    if cfg.probe:
        details["Probe"] = "frozen upstream, softmax-weighted sum of hidden layers; layer weights " + \
            ", ".join(f"{w:.3f}" for w in results.get("probe_layer_weights", []))
        details["Loading"] = (f"not a transformers model (no from_pretrained / pipeline): probe.safetensors holds the probe's "
                              f"layer weights and head, layer_weights.json the weights; the frozen upstream is {source}")
    write_model_card(cfg.output_dir, objective=f"fine-tuning ({cfg.task})", pipeline_tag=None if cfg.probe else PIPELINE_TAGS[cfg.task],
                     summary=results, details=details, datasets=[cfg.dataset_name] if cfg.dataset_name else None,
                     config=cfg, model_index=model_index)
