"""Masked-language-model settings: the shared text settings, nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hfssl.config import _help
from hfssl.objectives.text_base import TextPretrainConfig


@dataclass
class MLMConfig(TextPretrainConfig):
    """Masked-language-model pretraining of any AutoModelForMaskedLM."""

    objective: Literal["mlm"] = _help("Pretraining objective.", "mlm")
