"""`ElectraPretraining`: a generator (an AutoModelForMaskedLM) and a discriminator with one logit per token,
with shared embeddings; one forward that returns ELECTRA's two summed loss terms. Two layouts:
transformers' ElectraForMaskedLM + ElectraForPreTraining (post-LN, the paper's), or ModernBertForMaskedLM +
ModernBertForTokenClassification with one label (pre-LN, RoPE: the encoder of the MLM CPU recipes).

Shared embeddings (as google-research/electra ties them): the generator's embedding module IS the
discriminator's, and the generator's output layer stays tied to the shared token embeddings. An ELECTRA
generator narrower than its discriminator projects the shared embeddings to its own width with its own
`embeddings_project` (transformers does this when embedding_size differs); a ModernBERT generator keeps the
width and is shallower instead (as DeBERTa-v3 and COCO-LM make their generators smaller).
"""

from __future__ import annotations

import torch

from hfssl.attention import forward_kwargs, real_tokens
from hfssl.objectives.electra.loss import discriminator_loss, prior_entropy, replaced_labels, sample_replacements
from hfssl.masking.tokens import masked_positions_of
from hfssl.objectives.mlm.loss import masked_lm_loss, masked_logits


def share_embeddings(generator, discriminator) -> None:
    """Make the generator use the discriminator's embedding module (and tie its output layer to it).

    electra: token, position and token-type embeddings with their LayerNorm; a narrower generator projects them
    to its width (`embeddings_project`). modernbert: token embeddings and their LayerNorm (RoPE has no position
    table); no projection exists, so the generator has the discriminator's width and is made smaller by depth."""
    g, d = generator.config, discriminator.config
    if d.model_type == "modernbert":
        if (g.hidden_size, g.vocab_size) != (d.hidden_size, d.vocab_size):
            raise ValueError(f"a ModernBERT generator shares the discriminator's embeddings, so needs its (hidden_size, vocab_size) "
                             f"{(d.hidden_size, d.vocab_size)}, got {(g.hidden_size, g.vocab_size)}.")
        generator.model.embeddings = discriminator.model.embeddings
        generator.decoder.weight = discriminator.model.embeddings.tok_embeddings.weight
        return
    if (g.embedding_size, g.vocab_size, g.max_position_embeddings) != (d.embedding_size, d.vocab_size, d.max_position_embeddings):
        raise ValueError(f"generator and discriminator embeddings differ in shape: generator (embedding_size, vocab, positions) = "
                         f"{(g.embedding_size, g.vocab_size, g.max_position_embeddings)}, discriminator "
                         f"{(d.embedding_size, d.vocab_size, d.max_position_embeddings)}.")
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight


class ElectraPretraining(torch.nn.Module):
    """forward(input_ids, attention_mask, labels) -> {"loss_sum": {"generator", "discriminator"}, metrics}.

    input_ids: (B, T) the collator's masked input; labels: (B, T) original ids at masked positions, -100
    elsewhere; attention_mask (B, T) for a padded batch, or position_ids, sequence_ids (B, T) and cu_seqlens
    for a packed one (`hfssl.collators.packing`); masked_positions (N,) the collator's flat indices of the
    masked tokens (derived from labels when not given). Metrics: generator_accuracy (per masked token), discriminator_accuracy (per real token),
    discriminator_baseline_accuracy and discriminator_baseline_loss (per real token: the accuracy of always answering
    "original", and lambda x the BCE of always answering the batch's replaced share, i.e. what a discriminator that
    ignores its input scores), replaced_fraction (masked tokens whose sample differs from the original; per masked token).
    """

    def __init__(self, generator, discriminator, special_ids: torch.Tensor, generator_weight: float = 1.0,
                 discriminator_weight: float = 50.0, temperature: float = 1.0):
        super().__init__()
        share_embeddings(generator, discriminator)
        self.generator, self.discriminator = generator, discriminator
        self.generator_weight, self.discriminator_weight, self.temperature = generator_weight, discriminator_weight, temperature
        disallowed = torch.zeros(generator.config.vocab_size, dtype=torch.bool)
        disallowed[special_ids] = True
        self.register_buffer("disallowed", disallowed, persistent=False)

    def forward(self, input_ids, attention_mask=None, labels=None, *, masked_positions=None, position_ids=None, sequence_ids=None,
                cu_seqlens=None):
        # attention_mask: padded batches; position_ids, sequence_ids, cu_seqlens: packed ones (keywords, as the loop passes them)
        layout = {"attention_mask": attention_mask, "position_ids": position_ids, "sequence_ids": sequence_ids, "cu_seqlens": cu_seqlens}
        real = real_tokens(attention_mask, sequence_ids)  # (B, T)
        positions = masked_positions_of(labels) if masked_positions is None else masked_positions  # (N,) flat
        targets = labels.reshape(-1).index_select(0, positions)  # (N,)
        gen_logits = masked_logits(self.generator, input_ids, positions, **layout)  # (N, V)
        gen_sum, gen_accuracy = masked_lm_loss(gen_logits, targets)
        sampled = sample_replacements(gen_logits, self.disallowed, self.temperature)  # (N,) no gradient
        original = input_ids.reshape(-1).index_copy(0, positions, targets).view_as(input_ids)  # (B, T)
        corrupted = original.reshape(-1).index_copy(0, positions, sampled).view_as(input_ids)  # (B, T)
        is_replaced = replaced_labels(original, corrupted, real)
        disc_logits = self.discriminator(**forward_kwargs(self.discriminator, corrupted, **layout)).logits.view(input_ids.shape)  # (B, T[, 1]) -> (B, T)
        disc_sum, disc_correct = discriminator_loss(disc_logits, is_replaced, real)
        n_masked = max(positions.numel(), 1)
        replaced_share = is_replaced.sum() / real.sum().clamp_min(1)  # () of the real tokens
        return {
            "loss_sum": {"generator": self.generator_weight * gen_sum, "discriminator": self.discriminator_weight * disc_sum},
            "generator_accuracy": gen_accuracy,
            "discriminator_accuracy": disc_correct / real.sum().clamp_min(1),
            "discriminator_baseline_accuracy": 1.0 - replaced_share,
            "discriminator_baseline_loss": self.discriminator_weight * prior_entropy(replaced_share),
            "replaced_fraction": is_replaced.sum() / n_masked,
            "padding_fraction": 1.0 - real.float().mean(),
        }
