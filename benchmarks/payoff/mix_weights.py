#!/usr/bin/env python
"""Where does a pretraining help or hurt? Build a model that keeps the pretrained weights of some modules
and takes fresh (random-init) weights everywhere else, then fine-tune it like any pretrained folder.

    python benchmarks/payoff/mix_weights.py PRETRAINED OUT --keep wav2vec2.feature_extractor. [--keep ...] [--seed 0]

--keep takes parameter-name prefixes (state-dict names of the saved model, e.g. `wav2vec2.feature_extractor.`
for wav2vec 2.0's conv front end, `wav2vec2.encoder.` for its transformer). The fresh weights are the model
class's own initialization under --seed. The config and the feature extractor or tokenizer are saved with it, so
OUT loads wherever PRETRAINED does. Prints, per kept prefix, how many tensors it matched: a
prefix that matches nothing is an error, not a silent no-op.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers


def mix(pretrained: Path, out: Path, keep: list[str], seed: int = 0) -> dict[str, int]:
    """Save to OUT the model of PRETRAINED with fresh weights outside the KEEP prefixes; return matches per prefix."""
    config = transformers.AutoConfig.from_pretrained(pretrained)
    cls = getattr(transformers, config.architectures[0])
    trained = cls.from_pretrained(pretrained).state_dict()
    torch.manual_seed(seed)
    model = cls(config)  # the same architecture, freshly initialized
    mixed = model.state_dict()
    matched = {p: 0 for p in keep}
    for name, tensor in trained.items():
        for prefix in keep:
            if name.startswith(prefix):
                mixed[name] = tensor
                matched[prefix] += 1
                break
    missing = [p for p, n in matched.items() if n == 0]
    if missing:
        raise SystemExit(f"--keep {missing} matched no parameter of {pretrained} (names look like: {next(iter(trained))})")
    model.load_state_dict(mixed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # the feature extractor or tokenizer too, so OUT is a complete model folder
    if (pretrained / "preprocessor_config.json").is_file():
        transformers.AutoFeatureExtractor.from_pretrained(pretrained).save_pretrained(out)
    if (pretrained / "tokenizer_config.json").is_file():
        transformers.AutoTokenizer.from_pretrained(pretrained).save_pretrained(out)
    return matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pretrained", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--keep", action="append", required=True, help="parameter-name prefix to keep from PRETRAINED")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    a = ap.parse_args()
    for prefix, n in mix(a.pretrained, a.out, a.keep, a.seed).items():
        print(f"kept {n} tensors under {prefix}")
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
