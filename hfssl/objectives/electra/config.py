"""ELECTRA pretraining settings. Defaults follow the paper and google-research/electra's
configure_pretraining.py: generator 1/4 of the discriminator's width (1/3 for base) at full depth,
discriminator loss weight 50, 15% of tokens masked, of which 85% become [MASK] and 15% stay unchanged.
With model_type modernbert (pre-LN) the generator shares the discriminator's width and has 1/4 of its
depth by default (shared embeddings need one width; DeBERTa-v3 and COCO-LM use such shallow generators)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hfssl.config import _help
from hfssl.errors import ConfigError
from hfssl.objectives.text_base import TextPretrainConfig


@dataclass
class ElectraPretrainConfig(TextPretrainConfig):
    """ELECTRA: a small generator (masked LM) corrupts the input; the discriminator learns which tokens were replaced."""

    objective: Literal["electra"] = _help("Pretraining objective.", "electra")
    model_type: str = _help(
        "Architecture of a fresh model: 'electra' (post-LN; ElectraForPreTraining + ElectraForMaskedLM, the paper's) or "
        "'modernbert' (pre-LN, RoPE; ModernBertForTokenClassification with one label + ModernBertForMaskedLM).", "electra")
    mask_replace_prob: float = _help("Of the selected tokens, fraction replaced by [MASK] (ELECTRA: 0.85, the rest unchanged).", 0.85)
    random_replace_prob: float = _help("Of the selected tokens, fraction replaced by a random token (ELECTRA: 0).", 0.0)
    generator_size: Optional[float] = _help(
        "Generator hidden size as a fraction of the discriminator's (paper: 1/4 small, 1/3 base); its heads are hidden/64 "
        "(at least 1), its feed-forward 4x hidden. Default 0.25 for electra; modernbert allows only 1.0 (its default).", None)
    generator_layers: Optional[float] = _help(
        "Generator depth as a fraction of the discriminator's, rounded, at least 1 layer (default: 1.0 for electra, the "
        "paper's; 0.25 for modernbert).", None)
    generator_name_or_path: Optional[str] = _help("Continue from this generator (default: model_name_or_path/generator when it exists).", None)
    generator_weight: float = _help("Weight of the generator's masked-LM loss (per masked token).", 1.0)
    discriminator_weight: float = _help("Weight lambda of the discriminator's replaced-token loss (per real token; paper: 50).", 50.0)
    corrective_weight: float = _help(
        "Weight of a corrective LM term (after COCO-LM; 0 = off, the paper's ELECTRA): the discriminator also predicts the "
        "original token at each masked position from its corrupted input, through its own LM head tied to its token table "
        "(saved beside it as corrective_head.safetensors); per masked token.", 0.0)
    sampling_temperature: float = _help("Temperature of the generator's softmax when sampling replacements (paper: 1).", 1.0)
    embedding_sharing: Literal["tied", "gdes"] = _help(
        "How generator and discriminator share token embeddings: 'tied' (the paper's: one table, trained by both losses) or "
        "'gdes' (DeBERTa-v3's gradient-disentangled sharing: the discriminator reads stop_gradient(generator table) + its own "
        "delta, so only the masked LM trains the shared table; saved discriminators hold the merged table).", "tied")
    on_collapse: Literal["warn", "stop", "rollback"] = _help(
        "When the discriminator does no better than ignoring its input (loss_discriminator above (1 - min_discriminator_gain) x "
        "discriminator_baseline_loss, the loss of always answering the replaced share): warn, stop, or roll back to the last "
        "good checkpoint.", "warn")
    min_discriminator_gain: float = _help("Collapse threshold: the relative improvement of loss_discriminator over "
                                          "discriminator_baseline_loss below which an update counts as collapsed.", 0.02)
    collapse_check_after: int = _help("Check the discriminator only after this many updates.", 1000)
    collapse_patience: int = _help("Updates in a row below min_discriminator_gain that count as collapse.", 50)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type not in ("electra", "modernbert"):
            raise ConfigError(f"model_type must be 'electra' or 'modernbert' for the electra objective, got '{self.model_type}'.")
        modernbert = self.model_type == "modernbert"
        if self.generator_size is None:
            self.generator_size = 1.0 if modernbert else 0.25
        if self.generator_layers is None:
            self.generator_layers = 0.25 if modernbert else 1.0
        if modernbert and self.generator_size != 1.0:
            raise ConfigError(f"generator_size {self.generator_size} with model_type modernbert: a ModernBERT generator shares the "
                              "discriminator's token embeddings and has no projection, so it keeps the discriminator's width. "
                              "Make it smaller with generator_layers (e.g. 0.25) and leave generator_size at 1.0.")
        if not 0 < self.generator_size <= 1 or not 0 < self.generator_layers <= 1:
            raise ConfigError("generator_size and generator_layers must be in (0, 1].")
        if self.generator_weight <= 0 or self.discriminator_weight <= 0:
            raise ConfigError("generator_weight and discriminator_weight must be > 0.")
        if self.corrective_weight < 0:
            raise ConfigError(f"corrective_weight must be >= 0 (0 turns the corrective LM term off), got {self.corrective_weight}.")
        if self.embedding_sharing not in ("tied", "gdes"):
            raise ConfigError(f"embedding_sharing must be 'tied' or 'gdes', got '{self.embedding_sharing}'.")
        if self.sampling_temperature <= 0:
            raise ConfigError("sampling_temperature must be > 0.")
        if not 0 <= self.min_discriminator_gain < 1 or self.collapse_check_after < 0 or self.collapse_patience < 1:
            raise ConfigError("min_discriminator_gain must be in [0, 1), collapse_check_after >= 0, collapse_patience >= 1.")
        if self.generator_name_or_path and not self.model_name_or_path:
            raise ConfigError("generator_name_or_path continues a generator: set model_name_or_path (the discriminator) too.")
