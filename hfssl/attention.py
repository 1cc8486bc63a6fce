"""Which attention kernel a transformers model runs (`attn_implementation`, Hugging Face's name), and how
a padding-free batch tells that kernel where its examples begin and end.

Kernels: `eager` (transformers' reference: matmul + softmax), `sdpa` (torch's
scaled_dot_product_attention: fused kernels on CPU and GPU), `flash_attention_2` (the flash-attn
package; CUDA, fp16/bf16 only). Unset, hfssl takes the fastest one that is installed, supported by the
model and correct for the run: flash_attention_2 on CUDA with fp16/bf16 when flash-attn is installed,
else sdpa, else eager.

Padding-free batches (`hfssl.collators.packing`) put several examples in one row. Attention must not
cross their boundaries: sdpa and eager get a block-diagonal (R, 1, W, W) mask built from the per-token
example ids; flash_attention_2 gets the cumulative lengths of the flattened rows (`cu_seqlens`) and runs
its variable-length kernel, which spends no FLOP across examples or on a mask.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Optional

import torch

from hfssl.collators.packing import PackedLayout
from hfssl.errors import ConfigError

logger = logging.getLogger(__name__)

HELP = ("Attention kernel, Hugging Face's name: sdpa, flash_attention_2 (CUDA, fp16/bf16, needs the flash-attn "
        "package) or eager. Unset: the fastest available and correct one (logged).")

# Architectures whose base model takes a padding-free batch: `position_ids` restarting per example, and
# a 4-D mask (sdpa/eager) or cu_seqlens (flash_attention_2) passed through to every layer unchanged.
# Checked against the padded forward in tests/unit/test_packing.py. Not here: DistilBERT (no
# position_ids input), ModernBERT (its sliding-window layers would ignore a 4-D mask's window).
PACKABLE = ("bert", "roberta", "xlm-roberta", "camembert", "data2vec-text", "electra")
# Architectures whose position ids start after the padding index (padding_idx + 1): they need 2 more
# position embeddings than tokens per example, and packed position ids start there too.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text")


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def check_attn_implementation(value: Optional[str], mixed_precision: str) -> None:
    """Config-load check of the `attn_implementation` key (None: choose at model build)."""
    if value != "flash_attention_2":
        return
    if not flash_attention_installed():
        raise ConfigError("attn_implementation flash_attention_2 needs the flash-attn package (pip install flash-attn "
                          "--no-build-isolation); or use sdpa, or leave attn_implementation unset.")
    if not torch.cuda.is_available():
        raise ConfigError("attn_implementation flash_attention_2 runs on CUDA GPUs only; on this machine use sdpa or eager.")
    if mixed_precision not in ("fp16", "bf16"):
        raise ConfigError("attn_implementation flash_attention_2 computes in fp16/bf16 only: set mixed_precision bf16 "
                          "(or fp16), or use sdpa.")


def choose(model, requested: Optional[str], mixed_precision: str) -> tuple[str, str]:
    """(implementation, why) for a transformers model: the requested one, or the fastest supported one."""
    cls = type(model)
    if requested is not None:
        return requested, "attn_implementation"
    if cls._supports_flash_attn and flash_attention_installed() and torch.cuda.is_available() and mixed_precision in ("fp16", "bf16"):
        return "flash_attention_2", f"fastest available ({mixed_precision} on CUDA, flash-attn installed)"
    if cls._supports_sdpa:
        why = "flash-attn not installed" if not flash_attention_installed() else "flash_attention_2 needs CUDA and fp16/bf16"
        return "sdpa", f"fastest available ({why})"
    return "eager", f"{cls.__name__} supports neither sdpa nor flash_attention_2"


def use_attn_implementation(model, requested: Optional[str], mixed_precision: str, what: str = "model") -> str:
    """Set the attention kernel of a transformers model (in place) and log it; returns its name."""
    implementation, why = choose(model, requested, mixed_precision)
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"attn_implementation {implementation}: {type(model).__name__} cannot use it ({e}). "
                          f"Choose another (sdpa or eager) or leave it unset.") from None
    logger.info("Attention of the %s (%s): %s (%s).", what, type(model).__name__, model.config._attn_implementation, why)
    return model.config._attn_implementation


def packed_layout(config, capacity: int, padding_free: Optional[bool]) -> Optional[PackedLayout]:
    """The padding-free layout for a model with this config (rows of `capacity` tokens), or None for padded batches.

    padding_free None: pack when the architecture can take it, except with sdpa/eager attention on a CUDA GPU
    (there the block-diagonal mask cost more than the padding it saves: BERT-base, line-by-line text with 55%
    padding, bf16 on an H200: 146.6k real tokens/s packed vs 198.3k padded), else padded batches (logged);
    True: pack (a ConfigError for an architecture that cannot); False: padded batches."""
    if padding_free is False:
        return None
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if padding_free is None and implementation != "flash_attention_2" and torch.cuda.is_available():
        logger.info("Padded batches: on a GPU, %s attention over packed rows (a block-diagonal mask) is slower than "
                    "padding; flash_attention_2 packs without a mask (set padding_free true to pack anyway).", implementation)
        return None
    if config.model_type not in PACKABLE:
        if padding_free:
            raise ConfigError(f"padding_free: {config.model_type} models cannot take packed batches (supported: "
                              f"{', '.join(PACKABLE)}). Unset padding_free to use padded batches.")
        logger.info("Padded batches: %s models cannot take padding-free (packed) input.", config.model_type)
        return None
    offset = config.pad_token_id + 1 if config.model_type in OFFSET_POSITIONS else 0
    logger.info("Padding-free batches: examples packed into rows of %d tokens, position ids from %d.", capacity, offset)
    return PackedLayout(capacity=capacity, position_offset=offset)


def packed_attention(implementation: str, sequence_ids: torch.Tensor, cu_seqlens: torch.Tensor, dtype: torch.dtype) -> dict:
    """The base model's attention keyword arguments for a padding-free batch.

    Args:
        implementation: the model's attention kernel.
        sequence_ids: (R, W) long, the example each token belongs to (-1 at row-end padding, which then
            attends only to padding: a fully masked row would give NaN).
        cu_seqlens: (S + 1,) int32 boundaries of every segment (examples and row-end padding) of the
            flattened (1, R * W) batch; used by flash_attention_2 only.
        dtype: the dtype of eager's additive mask.
    Returns:
        {"attention_mask": (R, 1, W, W)} for sdpa (bool, True = attend) and eager (additive float), or
        flash_attention_2's varlen arguments {cu_seq_lens_q/k, max_length_q/k}.
    """
    if implementation == "flash_attention_2":
        width = sequence_ids.shape[1]  # no segment is longer than a row: a static bound, no device sync
        return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": width, "max_length_k": width}
    same = sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :]  # (R, 1, W, W)
    if implementation == "sdpa":
        return {"attention_mask": same}
    return {"attention_mask": torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill(~same, torch.finfo(dtype).min)}


def forward_kwargs(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                   position_ids: Optional[torch.Tensor] = None, sequence_ids: Optional[torch.Tensor] = None,
                   cu_seqlens: Optional[torch.Tensor] = None, **per_token: torch.Tensor) -> dict:
    """Keyword arguments of a transformers forward for a padded batch (attention_mask) or a packed one
    (position_ids, sequence_ids, cu_seqlens from `hfssl.collators.packing.pack`).

    input_ids and per-token inputs (token_type_ids): (R, W). For flash_attention_2 they are flattened to
    (1, R * W); the model's per-token outputs then come back flat: `.view(R, W, ...)` them."""
    if sequence_ids is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask, **per_token}
    implementation = model.config._attn_implementation
    flat = (lambda x: x.reshape(1, -1)) if implementation == "flash_attention_2" else (lambda x: x)  # noqa: E731
    kwargs = {"input_ids": flat(input_ids), "position_ids": flat(position_ids), **{k: flat(v) for k, v in per_token.items()}}
    return {**kwargs, **packed_attention(implementation, sequence_ids, cu_seqlens, model.dtype)}


def real_tokens(attention_mask: Optional[torch.Tensor], sequence_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """(R, W) bool, True at real tokens, for a padded batch (attention_mask) or a packed one (sequence_ids)."""
    return sequence_ids >= 0 if sequence_ids is not None else attention_mask.bool()
