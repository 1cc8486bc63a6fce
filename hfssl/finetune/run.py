"""`run_finetune.py`'s body: parse the recipe, fine-tune (or run the payoff comparison), print the results."""

from __future__ import annotations

import json
from pathlib import Path

from hfssl.config import parse_or_exit
from hfssl.errors import guarded
from hfssl.finetune.config import FinetuneConfig


def main(argv: list[str]) -> int:
    cfg = parse_or_exit(argv, configs={"finetune": FinetuneConfig}, default_objective="finetune")
    if cfg.compare_with_scratch:
        from hfssl.finetune.payoff import run_payoff

        return run_payoff(cfg)
    return run(cfg)


@guarded
def run(cfg) -> int:
    """Fine-tune (or only evaluate) and print the results; exit code 2 with one clear line on bad input."""
    from hfssl.finetune.pipeline import finetune
    from hfssl.pretrain import setup_logging

    setup_logging()
    if cfg.push_to_hub:  # a missing login found now, not after the run
        from hfssl.hub import check_push_to_hub

        check_push_to_hub(cfg.output_dir, cfg.hub_model_id)
    results = finetune(cfg)
    if results is not None:
        print("\n" + json.dumps(results, indent=1))
        print(f"results written to: {Path(cfg.output_dir).resolve()}")
        if cfg.push_to_hub and cfg.do_train:
            from hfssl.hub import push_to_hub

            print(f"pushed: {push_to_hub(cfg.output_dir, cfg.hub_model_id)}")
    return 0
