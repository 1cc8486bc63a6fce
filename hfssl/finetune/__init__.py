"""Downstream fine-tuning on the shared training loop: text classification, audio classification,
CTC speech recognition, frozen-upstream probes and the "did pretraining pay off?" report.

Entry point: `run_finetune.py RECIPE [--key value ...]` (body in `hfssl.finetune.run`).
"""
