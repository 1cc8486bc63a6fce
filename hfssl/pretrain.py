"""`run_pretrain.py`'s body: parse the recipe, build the objective, run the loop, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hfssl.config import parse_or_exit
from hfssl.errors import guarded

logger = logging.getLogger("hfssl")

# `python run_pretrain.py` with no recipe runs this one (built-in corpus, tiny model, CPU minutes).
DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mlm" / "tiny-cpu.yaml"


def main(argv: list[str]) -> int:
    # No recipe and no objective named: the embedded default (MLM) recipe, overridable key by key.
    named = any(a == "--objective" or a.startswith("--objective=") for a in argv)
    if (not argv or argv[0].startswith("--")) and not named and "--help" not in argv and "-h" not in argv:
        if DEFAULT_RECIPE.is_file():
            argv = [str(DEFAULT_RECIPE), *argv]
    from hfssl.objectives import config_classes

    cfg = parse_or_exit(argv, config_classes())
    return run(cfg)


@guarded
def run(cfg) -> int:
    from hfssl.objectives import build_objective
    from hfssl.run_dir import close_run_dir, open_run_dir
    from hfssl.distributed import end_processes, make_accelerator
    from hfssl.trainer import train

    setup_logging()
    if cfg.push_to_hub:  # a missing login found now, not after the run
        from hfssl.hub import check_push_to_hub

        check_push_to_hub(cfg.output_dir, cfg.hub_model_id)
    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        logging.getLogger("hfssl").setLevel(logging.WARNING)
    run_dir = open_run_dir(cfg, accelerator)  # lock and check output_dir before the objective writes to it
    try:
        objective = build_objective(cfg, accelerator)
        summary = train(cfg, objective, accelerator)
        del objective  # the model holds the process group (see end_processes)
    finally:
        close_run_dir(run_dir)
    end_processes(accelerator)
    if accelerator.is_main_process:
        shown = {k: v for k, v in summary.items() if k.startswith("eval_") or k in ("steps",)}
        print("\n" + json.dumps(shown, indent=1))
        if "eval_perplexity" in summary:
            print(f"eval perplexity: {summary['eval_perplexity']:.2f}")
        print(f"model saved to: {Path(cfg.output_dir).resolve()}")
        if cfg.push_to_hub:
            from hfssl.hub import push_to_hub

            print(f"pushed: {push_to_hub(cfg.output_dir, cfg.hub_model_id)}")
    return 0


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    for noisy in ("datasets", "transformers", "accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
