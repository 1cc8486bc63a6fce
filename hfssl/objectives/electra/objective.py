"""ELECTRA pretraining (Clark et al., 2020): replaced-token detection on the same text pipeline, masking
and loop as MLM. Two loss terms, each normalized by its own global count: the generator's masked-LM
loss by the masked tokens, lambda x the discriminator's BCE by the real tokens.

Output folder: the discriminator at the top, so `AutoModel`, `AutoModelForSequenceClassification` and
`run_finetune.py` load it; the generator (ElectraForMaskedLM / ModernBertForMaskedLM) in `generator/`, which
`pipeline("fill-mask")` loads. Both hold the tokenizer. The electra layout saves ElectraForPreTraining, whose
replaced-token head fine-tuning leaves behind (its weights have their own names). The modernbert layout saves
the encoder (ModernBertModel) and its replaced-token head apart, in `replaced_token_head.safetensors`:
ModernBertForSequenceClassification's head has the same names as the token classifier's, and loading the
one-logit head into it cost fine-tuning 10 points (docs/payoff/ablations.md, "ELECTRA on the pre-LN encoder").
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Optional

import torch
from transformers import (AutoConfig, ElectraForMaskedLM, ElectraForPreTraining, ModernBertForMaskedLM,
                          ModernBertForTokenClassification)

from hfssl.attention import use_attn_implementation
from hfssl.data.text.corpus import BUILTIN_CORPUS, load_text_datasets
from hfssl.data.text.prepare import prepare_text_splits
from hfssl.data.text.tokenizer import load_or_train_tokenizer
from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective
from hfssl.objectives.collapse import CollapseGuard
from hfssl.objectives.electra.config import ElectraPretrainConfig
from hfssl.objectives.electra.model import ElectraPretraining, corrective_head_for, plain_token_embeddings, start_from_one_table
from hfssl.objectives.text_base import (check_vocab_fits, masking_description, mlm_collator, text_model_config, text_packing,
                                       usable_positions)

logger = logging.getLogger(__name__)

GENERATOR_DIR = "generator"
RTD_HEAD = "replaced_token_head.safetensors"  # modernbert layout: the discriminator's head, beside its encoder
CORRECTIVE_HEAD = "corrective_head.safetensors"  # corrective_weight > 0: the discriminator's LM head, beside it
# model_type -> (discriminator class, generator class). The discriminator has one logit per token.
LAYOUTS = {
    "electra": (ElectraForPreTraining, ElectraForMaskedLM),  # post-LN, the paper's
    "modernbert": (ModernBertForTokenClassification, ModernBertForMaskedLM),  # pre-LN, RoPE, GeGLU
}


class ElectraCollator:
    """The MLM collator's batch, with ELECTRA's target counts: masked tokens (generator; and the corrective
    term when `corrective`) and real tokens (discriminator). Generator first: metrics without a term prefix are
    weighted by it."""

    def __init__(self, mlm, corrective: bool = False):
        self.mlm, self.corrective = mlm, corrective

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        batch = self.mlm(examples, seed=seed, progress=progress)
        masked = batch["num_targets"]
        batch["num_targets"] = {"generator": masked, "discriminator": batch["num_inputs"],
                                **({"corrective": masked} if self.corrective else {})}
        return batch


def generator_config(discriminator_config, size: float, layers: float):
    """The generator's config. electra (google-research/electra): width `size` x the discriminator's, heads =
    width / 64 (>= 1), feed-forward 4 x width, same embedding size (shared). modernbert: the discriminator's
    width (shared embeddings, no projection; `size` must be 1). Both: depth `layers` x the discriminator's."""
    depth = max(1, round(discriminator_config.num_hidden_layers * layers))
    if discriminator_config.model_type == "modernbert":
        if size != 1.0:
            raise ConfigError("a ModernBERT generator keeps the discriminator's width (generator_size 1.0); use generator_layers.")
        # Rebuilt, not edited: layer_types (local/global attention per layer) must follow the new depth.
        fields = {k: v for k, v in discriminator_config.to_dict().items() if k not in ("layer_types", "id2label", "label2id")}
        return type(discriminator_config).from_dict({**fields, "num_hidden_layers": depth, "architectures": ["ModernBertForMaskedLM"]})
    config = copy.deepcopy(discriminator_config)
    config.num_hidden_layers = depth
    config.hidden_size = max(1, round(discriminator_config.hidden_size * size))
    config.num_attention_heads = max(1, config.hidden_size // 64)
    if config.hidden_size % config.num_attention_heads:  # transformers skips its own check when embedding_size is set
        raise ConfigError(f"generator_size {size:g} makes the generator {config.hidden_size} wide (hidden_size "
                          f"{discriminator_config.hidden_size} x {size:g}), which its {config.num_attention_heads} heads of "
                          f"~64 (width // 64) do not divide: choose a generator_size whose width is a multiple of 64 or under "
                          f"128 (e.g. 0.25 or 0.5 of {discriminator_config.hidden_size}).")
    config.intermediate_size = 4 * config.hidden_size
    config.architectures = ["ElectraForMaskedLM"]
    return config


def _millions(model) -> float:
    """Parameters of a model, in millions."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def save_tensors(state: dict, path: Path) -> None:
    """A head's weights (not part of the transformers model) as safetensors beside it."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def load_rtd_head(discriminator, path: Path) -> None:
    """Put a saved replaced-token head (head.*, classifier.*) back on a ModernBertForTokenClassification."""
    if not path.is_file():
        raise ConfigError(f"Continuing a ModernBERT ELECTRA discriminator needs its replaced-token head: '{path}' is missing. "
                          "Point model_name_or_path at a folder hfssl's electra objective saved.")
    from safetensors.torch import load_file

    missing, unexpected = discriminator.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or any(not k.startswith("model.") for k in missing):
        raise ConfigError(f"'{path}' does not fit the discriminator: missing {missing}, unexpected {unexpected}.")


class ElectraObjective(Objective):
    name = "electra"
    input_unit = "tokens"

    def __init__(self, cfg: ElectraPretrainConfig, accelerator=None):
        super().__init__(cfg)
        raw = load_text_datasets(cfg)
        self.tokenizer = load_or_train_tokenizer(cfg, raw["train"], accelerator)
        generator, discriminator = self._models()
        for model, what in ((generator, "generator"), (discriminator, "discriminator")):
            check_vocab_fits(model.config, self.tokenizer)
            use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision, what)
        special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        sizes = (_millions(discriminator), _millions(generator))  # before sharing, which makes one model hold the other's table
        self.model = ElectraPretraining(generator, discriminator, special, cfg.generator_weight, cfg.discriminator_weight,
                                        cfg.sampling_temperature, cfg.embedding_sharing, cfg.corrective_weight,
                                        self._corrective_head(discriminator))
        self.guard = CollapseGuard(cfg)
        self.collator = ElectraCollator(mlm_collator(cfg, self.tokenizer, text_packing(cfg, discriminator.config)),
                                        corrective=cfg.corrective_weight > 0)
        data = prepare_text_splits(cfg, self.tokenizer, raw, usable_positions(discriminator.config), accelerator)
        self.train_dataset, self.eval_dataset, self.data_summary = data.train, data.validation, data.summary
        logger.info("ELECTRA: discriminator %d x %d (%.1fM parameters), generator %d x %d (%.1fM, token embeddings shared: %s), lambda %s.",
                    discriminator.config.num_hidden_layers, discriminator.config.hidden_size, sizes[0],
                    generator.config.num_hidden_layers, generator.config.hidden_size, sizes[1], cfg.embedding_sharing,
                    cfg.discriminator_weight)

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Collapse: the discriminator's loss no better than that of ignoring the input (always answering the
        replaced share) by min_discriminator_gain, for collapse_patience updates in a row after collapse_check_after.
        Seen with the post-LN ELECTRA encoder, and with the pre-LN one at sampling temperature 1 once the generator's
        samples became plausible: it outputs the label prior everywhere, its accuracy equals that of answering
        "original", and it learns nothing a fine-tuning can use."""
        if not window:
            return None
        cfg, row = self.cfg, window[-1]
        loss, baseline = row.get("loss_discriminator"), row.get("discriminator_baseline_loss")
        if not all(isinstance(v, float) and math.isfinite(v) for v in (loss, baseline)) or baseline <= 0:
            collapsed = None  # a skipped (non-finite or empty) update says nothing
        else:
            collapsed = row["step"] > cfg.collapse_check_after and loss > (1 - cfg.min_discriminator_gain) * baseline
        return self.guard.check(
            row["step"], collapsed,
            lambda streak: (f"ELECTRA discriminator collapse at step {row['step']}: loss_discriminator {loss:.3f} vs {baseline:.3f} "
                            f"for ignoring the input (always answering the replaced share), less than "
                            f"{cfg.min_discriminator_gain:.0%} better, for {streak} update(s)."),
            "Raise sampling_temperature (at 2 the pre-LN discriminator kept learning where at 1 it fell back to the prior), "
            "lower the learning rate or lengthen the warm-up (the post-LN encoder can sit at the label prior), or lower "
            "discriminator_weight.")

    def state_dict(self) -> dict:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.guard.load_state_dict(state)

    def _corrective_head(self, discriminator):
        """The corrective LM head: continued from model_name_or_path when it holds one, else fresh (None when off)."""
        cfg = self.cfg
        if cfg.corrective_weight <= 0:
            return None
        head = corrective_head_for(discriminator)
        saved = Path(cfg.model_name_or_path or "") / CORRECTIVE_HEAD
        if cfg.model_name_or_path and saved.is_file():
            from safetensors.torch import load_file

            head.load_state_dict(load_file(str(saved)))
        elif cfg.model_name_or_path:
            logger.info("'%s' has no %s: the corrective LM head starts fresh.", cfg.model_name_or_path, CORRECTIVE_HEAD)
        return head

    def _models(self):
        cfg = self.cfg
        if cfg.model_name_or_path:
            model_type = AutoConfig.from_pretrained(cfg.model_name_or_path).model_type
            if model_type not in LAYOUTS:
                raise ConfigError(f"model_name_or_path '{cfg.model_name_or_path}' is a {model_type} model; ELECTRA continues "
                                  f"{' or '.join(LAYOUTS)} discriminators.")
            disc_class, gen_class = LAYOUTS[model_type]
            discriminator = disc_class.from_pretrained(cfg.model_name_or_path, **({"num_labels": 1} if model_type == "modernbert" else {}))
            if model_type == "modernbert":
                load_rtd_head(discriminator, Path(cfg.model_name_or_path) / RTD_HEAD)
            source = cfg.generator_name_or_path or str(Path(cfg.model_name_or_path) / GENERATOR_DIR)
            try:
                generator = gen_class.from_pretrained(source)
            except OSError as e:
                raise ConfigError(f"Continuing ELECTRA needs its generator too: could not load '{source}' ({e}). "
                                  "Set generator_name_or_path.") from None
            return generator, discriminator
        disc_class, gen_class = LAYOUTS[cfg.model_type]
        config = text_model_config(cfg, self.tokenizer, cfg.max_seq_length, model_type=cfg.model_type)
        if cfg.model_type == "modernbert":
            config.num_labels = 1  # ModernBertForTokenClassification: one replaced/original logit per token
        config.architectures = [disc_class.__name__]
        discriminator = disc_class(config)
        generator = gen_class(generator_config(config, cfg.generator_size, cfg.generator_layers))
        start_from_one_table(generator, discriminator)
        return generator, discriminator

    @staticmethod
    def _save_discriminator(disc, output_dir: str) -> None:
        if disc.config.model_type == "modernbert":
            disc.model.save_pretrained(output_dir)  # the encoder alone: fine-tuning starts its heads fresh
            save_tensors({k: v for k, v in disc.state_dict().items() if not k.startswith("model.")}, Path(output_dir) / RTD_HEAD)
        else:
            disc.save_pretrained(output_dir)

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.hub import write_model_card

        cfg, disc, gen = self.cfg, self.model.discriminator, self.model.generator
        with plain_token_embeddings(disc):  # gdes: the merged table, so the folder is a plain transformers model
            self._save_discriminator(disc, output_dir)
            disc_params = _millions(disc)
        if cfg.corrective_weight > 0:  # not part of the transformers model: kept beside it for continuing
            save_tensors(self.model.corrective_head.state_dict(), Path(output_dir) / CORRECTIVE_HEAD)
        self.tokenizer.save_pretrained(output_dir)
        gen.save_pretrained(Path(output_dir) / GENERATOR_DIR)
        self.tokenizer.save_pretrained(Path(output_dir) / GENERATOR_DIR)
        write_model_card(output_dir, objective="ELECTRA replaced-token detection", pipeline_tag="feature-extraction", summary=summary,
                         tags=["electra", "self-supervised"], details={
            "Base": cfg.model_name_or_path or f"from scratch ({type(disc).__name__}, {disc.config.num_hidden_layers} layers x "
                                               f"{disc.config.hidden_size}, {disc_params:.1f}M parameters)"
                    + (f"; saved as its encoder (ModernBertModel), the replaced-token head in `{RTD_HEAD}`"
                       if disc.config.model_type == "modernbert" else ""),
            "Generator": f"`{GENERATOR_DIR}/` ({type(gen).__name__}, {gen.config.num_hidden_layers} layers x {gen.config.hidden_size}, "
                         f"{_millions(gen):.1f}M parameters, token embeddings shared with the discriminator "
                         f"({'tied' if cfg.embedding_sharing == 'tied' else 'gradient-disentangled: the discriminator adds its own delta'}); "
                         "loads in pipeline('fill-mask'))",
            "Corpus": cfg.dataset_name or cfg.train_file or f"built-in {BUILTIN_CORPUS}",
            "Training data": self.data_summary,
            "Tokens seen": f"{summary.get('tokens_seen', 0):,.0f}",
            "Masking": masking_description(cfg),
            "Loss": f"generator MLM x {cfg.generator_weight} (per masked token) + discriminator BCE x {cfg.discriminator_weight} "
                    f"(per real token)"
                    + (f" + corrective LM x {cfg.corrective_weight} (the discriminator predicts the original token at the masked "
                       f"positions; per masked token; head in `{CORRECTIVE_HEAD}`)" if cfg.corrective_weight > 0 else "")
                    + f", sampling temperature {cfg.sampling_temperature}",
            "Sequence length": f"{cfg.max_seq_length} ({'line by line' if cfg.line_by_line else 'packed'})",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)
