"""Constant-graph LayerDrop for the speech encoders (wav2vec 2.0, HuBERT, data2vec-audio, WavLM, ...,
in pretraining and in the models fine-tuned from them).

transformers' LayerDrop skips a dropped layer's call. The layer's parameters then get no gradient:
DDP stops at the next update ("Expected to have finished reduction in the prior iteration") unless
`find_unused_parameters` is on, and under FSDP transformers runs every layer anyway (its
`synced_gpus` branch), i.e. LayerDrop silently does nothing. Here every layer always runs and a
dropped one contributes nothing: its output is replaced by its input, `torch.where(drop, input,
output)`. Every parameter stays in the graph (gradient 0 when dropped), so DDP needs no unused-
parameter search (which walks the autograd graph every update) and FSDP's processes stay in
lock-step. The encoder's own LayerDrop is turned off for the length of its forward only: the model's
config (and so the saved config.json) keeps the user's value.

Cost: a dropped layer's forward and backward are computed and thrown away, so the constant graph
costs what no LayerDrop costs, and gives up the ~layerdrop share of encoder compute that skipping
saves. Measured (benchmarks/bench_layerdrop.py, wav2vec 2.0 encoder 12 x 256, batch 4 x 4 s, AdamW,
60 updates each on a shared 2-core CPU, load average ~11), seconds per update, median / fastest:
transformers skipping at layerdrop 0.1 2.31 / 1.97, constant graph at 0.1 2.52 / 2.24, no LayerDrop
2.46 / 2.30: skipping was 9% / 12% faster than the constant graph, which matched no LayerDrop within
the noise. With the recipes' 0.05 the gap halves.

Not the same as skipping in one respect: a dropped layer's parameters get a zero gradient, not none,
so AdamW still moves them by their momentum and weight decay that update (a skipped parameter is left
alone; fairseq's LayerDrop under DDP, with find_unused_parameters, behaves like skipping).

Draws: one `torch.rand([])` from the global generator before each layer, as transformers draws;
the loop reseeds that generator per micro-batch, so which layers drop is a function of the batch
position (1 process x 2 accumulation steps = 2 processes). Gradient checkpointing: transformers
checkpoints a layer's `forward` inside the module call, and these hooks run outside it, so the
recomputation in backward neither draws again nor changes the decision (tests/unit/test_layerdrop.py).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)


class _OwnLayerdropOff:
    """Encoder pre-/post-forward hooks: its config's layerdrop reads 0 while the encoder runs."""

    def __init__(self, probability: float):
        self.probability = probability

    def __call__(self, encoder, args):
        encoder.config.layerdrop = 0.0

    def restore(self, encoder, args, output):
        encoder.config.layerdrop = self.probability


class _LayerDrop:
    """One layer's hooks: the pre-hook draws (training only), the hook replaces a dropped layer's output
    (B, T, H) by its input; a tuple output (WavLM: hidden states, position bias) keeps its other members."""

    def __init__(self, probability: float):
        self.probability = probability
        self.drop: Optional[torch.Tensor] = None

    def __call__(self, layer, args):
        self.drop = torch.rand([]) < self.probability if layer.training else None

    def replace(self, layer, args, kwargs, output):
        drop, self.drop = self.drop, None
        if drop is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        drop = drop.to(hidden.device, non_blocking=True)
        if isinstance(output, tuple):
            return (torch.where(drop, hidden, output[0]), *output[1:])
        return torch.where(drop, hidden, output)


def constant_graph_layerdrop(model: torch.nn.Module) -> list[str]:
    """Replace the LayerDrop of every encoder inside `model` with the constant-graph one (see the
    module docstring). An encoder is a transformers module with a `config` whose `layerdrop` > 0
    and a `layers` ModuleList (the structure all of transformers' speech encoders share). Calling it
    again changes nothing. Returns the names of the encoders changed."""
    from transformers import PretrainedConfig

    changed = []
    for name, module in model.named_modules():
        # Third-party encoders are recognized by their structure: they have no common base class.
        config, layers = getattr(module, "config", None), getattr(module, "layers", None)
        if not (isinstance(config, PretrainedConfig) and isinstance(layers, torch.nn.ModuleList)):
            continue
        probability = float(getattr(config, "layerdrop", 0.0) or 0.0)
        if probability <= 0 or any(isinstance(h, _OwnLayerdropOff) for h in module._forward_pre_hooks.values()):
            continue
        own = _OwnLayerdropOff(probability)
        module.register_forward_pre_hook(own)
        module.register_forward_hook(own.restore, always_call=True)  # also when the forward raises
        # WavLM never drops its first layer (it computes the relative position bias the others reuse).
        first = 1 if config.model_type == "wavlm" else 0
        for layer in list(layers)[first:]:
            hooks = _LayerDrop(probability)
            layer.register_forward_pre_hook(hooks)
            layer.register_forward_hook(hooks.replace, with_kwargs=True)
        changed.append(name or type(module).__name__)
        logger.info("LayerDrop %g on %s (%d layers): constant graph, every layer runs and a dropped one passes its input "
                    "through.", probability, name or type(module).__name__, len(layers) - first)
    return changed
