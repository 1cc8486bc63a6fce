"""The EMA teacher: a frozen copy of (part of) the student that follows it as
teacher <- tau * teacher + (1 - tau) * student after every optimizer update, and whose top K blocks give
data2vec's targets.

Why it lives outside the trained module (a plain attribute of the wrapper, not a submodule): its
parameters must never reach the optimizer, receive gradients, be synchronized by DDP or sharded by FSDP,
and they are not part of the saved model. The objective's state (`state_dict`) carries them, so a checkpoint
resumes the teacher bit for bit. Every process holds the whole teacher; since every process has the same
student after each update, every process computes the same teacher.

Parameters whose names start with one of `copied` are copied from the student instead of averaged, as
fairseq does with its skip keys (text: the embeddings; speech: the positional convolution).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch.distributed.tensor import DTensor

from hfssl.errors import CheckpointError


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole parameter: FSDP2 holds a shard of it (a DTensor); gather it (a collective on every process)."""
    return p.full_tensor() if isinstance(p, DTensor) else p


class EMATeacher:
    """Args:
        student: the module to copy (its parameter names are the teacher's).
        blocks: module -> its transformer blocks in order (e.g. `lambda m: m.encoder.layer`).
        feed_forward: block -> the submodule whose output is the block's feed-forward output before the last
            residual connection (e.g. `lambda b: b.output.dense`); None: the block's own output is the target.
        top_k: how many of the last blocks give targets.
        copied: parameter-name prefixes copied from the student instead of averaged.
    """

    def __init__(self, student: torch.nn.Module, blocks: Callable[[torch.nn.Module], Sequence[torch.nn.Module]],
                 feed_forward: Optional[Callable[[torch.nn.Module], torch.nn.Module]], top_k: int, copied: tuple[str, ...] = (),
                 device: torch.device | str = "cpu"):
        self.module = copy.deepcopy(student).requires_grad_(False).eval().to(device)
        names = [n for n, _ in self.module.named_parameters()]
        self.averaged = [n for n in names if not n.startswith(copied)]  # str.startswith(()) is False
        self.copied = [n for n in names if n.startswith(copied)]
        self._outputs: list[torch.Tensor] = []
        # Hooks stay registered (no per-call registration that a compiled graph would see change).
        for block in list(blocks(self.module))[-top_k:]:
            source = block if feed_forward is None else feed_forward(block)
            # a block may return (hidden_states, attentions, ...): the hidden states (B, T, H) come first
            source.register_forward_hook(lambda module, args, output: self._outputs.append(
                output[0] if isinstance(output, tuple) else output))

    @torch.no_grad()
    def top_outputs(self, **inputs) -> list[torch.Tensor]:
        """Run the teacher (eval mode, no gradient) on `inputs`; the K feed-forward outputs (B, T, H), lowest first."""
        self._outputs.clear()
        self.module(**inputs)
        outputs, self._outputs = self._outputs, []
        return outputs

    @torch.no_grad()
    def update(self, student: torch.nn.Module, tau: float) -> None:
        """teacher <- tau * teacher + (1 - tau) * student for the averaged parameters; copy the others."""
        params = dict(student.named_parameters())
        mine = dict(self.module.named_parameters())
        teacher = [mine[n] for n in self.averaged]
        torch._foreach_mul_(teacher, tau)
        torch._foreach_add_(teacher, [_full(params[n]).detach() for n in self.averaged], alpha=1.0 - tau)
        for n in self.copied:
            mine[n].copy_(_full(params[n]).detach())

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat {prefix + parameter name: CPU copy}."""
        return {prefix + n: p.detach().to("cpu", copy=True) for n, p in self.module.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, state: dict, prefix: str) -> None:
        for n, p in self.module.named_parameters():
            if prefix + n not in state:
                raise CheckpointError(f"The checkpoint's data2vec teacher has no '{n}': it was written by another model "
                                      "or another hfssl version; it cannot resume this run.")
            p.copy_(state[prefix + n])


# Where a text architecture keeps its blocks and the feed-forward output before the residual add.
# BERT layout (Data2VecText, RoBERTa, BERT, ...): post-LN blocks, block.output.dense.
BERT_LAYOUT = (lambda m: m.encoder.layer, lambda b: b.output.dense)
# ModernBERT: pre-LN blocks, block.mlp (its last linear, Wo, then the residual add).
TEXT_LAYOUTS = {"modernbert": (lambda m: m.layers, lambda b: b.mlp)}


def text_teacher(encoder: torch.nn.Module, top_k: int, device: torch.device | str = "cpu",
                 source: str = "feed_forward") -> EMATeacher:
    """The teacher of a text encoder (BERT layout or ModernBERT): the feed-forward outputs of the top blocks before
    the residual (source 'feed_forward') or the blocks' outputs ('block'); the embeddings are copied (fairseq
    ema_transformer_layers_only)."""
    blocks, feed_forward = TEXT_LAYOUTS.get(encoder.config.model_type, BERT_LAYOUT)
    return EMATeacher(encoder, blocks=blocks, feed_forward=feed_forward if source == "feed_forward" else None, top_k=top_k,
                      copied=("embeddings.",), device=device)


def audio_teacher(student: torch.nn.Module, top_k: int, device: torch.device | str = "cpu",
                  source: str = "feed_forward") -> EMATeacher:
    """The teacher of a Data2VecAudioModel: an EMA of its transformer (`encoder`), block.feed_forward's output before
    the residual (source 'feed_forward') or the block's output ('block'); the positional convolution is copied
    (fairseq ema_transformer_only + ema_layers_only)."""
    return EMATeacher(student.encoder, blocks=lambda m: m.layers,
                      feed_forward=(lambda b: b.feed_forward) if source == "feed_forward" else None, top_k=top_k,
                      copied=("pos_conv_embed.",), device=device)
