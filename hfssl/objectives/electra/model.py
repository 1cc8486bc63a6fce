"""`ElectraPretraining`: a generator (an AutoModelForMaskedLM) and a discriminator with one logit per token,
with shared embeddings; one forward that returns ELECTRA's two summed loss terms. Two layouts:
transformers' ElectraForMaskedLM + ElectraForPreTraining (post-LN, the paper's), or ModernBertForMaskedLM +
ModernBertForTokenClassification with one label (pre-LN, RoPE: the encoder of the MLM CPU recipes).

Shared embeddings, two ways (`embedding_sharing`):
- "tied" (google-research/electra): the generator's embedding module IS the discriminator's, and the
  generator's output layer stays tied to the shared token embeddings; both losses train the one table.
- "gdes" (gradient-disentangled sharing, DeBERTa-v3, He et al. 2021): the discriminator's token table is
  stop_gradient(E_G) + E_delta. Only the generator's masked-LM loss trains E_G; the discriminator's loss
  trains E_delta (zero at the start). The replaced-token loss then no longer pulls the token embeddings
  away from what the masked LM makes of them (DeBERTa-v3's "tug of war"). Saved discriminators hold the
  merged table E_G + E_delta, so they load as plain transformers models.
An ELECTRA generator narrower than its discriminator projects the shared embeddings to its own width with its
own `embeddings_project` (transformers does this when embedding_size differs); a ModernBERT generator keeps
the width and is shallower instead (as DeBERTa-v3 and COCO-LM make their generators smaller).

Optional corrective LM term (`corrective_weight` > 0; after COCO-LM, Meng et al. 2021): the discriminator also
predicts the original token at each masked position from its corrupted input, through its own LM head tied to
its token table. It gives the discriminator's encoder a token-prediction signal beside replaced-token detection.
Unlike COCO-LM it is scored at the masked positions only (the others are the original token anyway) and has no
copy mechanism.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from hfssl.attention import forward_kwargs, real_tokens
from hfssl.objectives.electra.loss import discriminator_loss, prior_entropy, replaced_labels, sample_replacements
from hfssl.masking.tokens import masked_positions_of
from hfssl.objectives.mlm.loss import masked_lm_loss, masked_logits

# How each discriminator layout turns its encoder's hidden states (..., H) into replaced-token logits (..., [1]).
RTD_HEADS = {
    "modernbert": lambda d, h: d.classifier(d.drop(d.head(h))),  # ModernBertForTokenClassification with one label
    "electra": lambda d, h: d.discriminator_predictions(h),  # ElectraForPreTraining
}


class DisentangledEmbedding(torch.nn.Module):
    """The discriminator's token table under gdes: stop_gradient(shared.weight) + delta.

    forward(ids (...)) -> (..., hidden). `shared` is the generator's nn.Embedding (a reference, trained by the
    generator only); `delta` (V, H) is the discriminator's own correction."""

    def __init__(self, shared: torch.nn.Embedding, delta: torch.Tensor):
        super().__init__()
        self.shared = shared
        self.delta = torch.nn.Parameter(delta.detach().clone())
        self.padding_idx = shared.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.shared.weight.detach() + self.delta  # (V, H)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx)


def _token_embedding_owner(model):
    """(module, attribute) holding a model's token table: ModernBERT's embeddings.tok_embeddings or
    ELECTRA's embeddings.word_embeddings (discriminator or generator)."""
    if model.config.model_type == "modernbert":
        return model.model.embeddings, "tok_embeddings"
    return model.electra.embeddings, "word_embeddings"


def share_embeddings(generator, discriminator, mode: str = "tied") -> None:
    """Share the token embeddings between generator and discriminator (`mode`: "tied" or "gdes", see the
    module docstring); the generator's output layer stays tied to its input table.

    tied, electra: token, position and token-type embeddings with their LayerNorm are one module; modernbert:
    token embeddings and their LayerNorm (RoPE has no position table). gdes: only the token table is shared
    (through DisentangledEmbedding, delta = the discriminator's table - the generator's, so a continued run
    keeps both); each model keeps its own LayerNorm (and position tables). A ModernBERT generator has no
    embedding projection, so it has the discriminator's width and is made smaller by depth."""
    g, d = generator.config, discriminator.config
    if d.model_type == "modernbert":
        if (g.hidden_size, g.vocab_size) != (d.hidden_size, d.vocab_size):
            raise ValueError(f"a ModernBERT generator shares the discriminator's embeddings, so needs its (hidden_size, vocab_size) "
                             f"{(d.hidden_size, d.vocab_size)}, got {(g.hidden_size, g.vocab_size)}.")
    elif (g.embedding_size, g.vocab_size, g.max_position_embeddings) != (d.embedding_size, d.vocab_size, d.max_position_embeddings):
        raise ValueError(f"generator and discriminator embeddings differ in shape: generator (embedding_size, vocab, positions) = "
                         f"{(g.embedding_size, g.vocab_size, g.max_position_embeddings)}, discriminator "
                         f"{(d.embedding_size, d.vocab_size, d.max_position_embeddings)}.")
    if mode not in ("tied", "gdes"):
        raise ValueError(f"embedding_sharing must be 'tied' or 'gdes', got '{mode}'.")
    if mode == "tied":
        if d.model_type == "modernbert":
            generator.model.embeddings = discriminator.model.embeddings
        else:
            generator.electra.embeddings = discriminator.electra.embeddings
    else:
        (gen_owner, name), (disc_owner, _) = _token_embedding_owner(generator), _token_embedding_owner(discriminator)
        table = getattr(gen_owner, name)
        setattr(disc_owner, name, DisentangledEmbedding(table, getattr(disc_owner, name).weight - table.weight))
    generator.get_output_embeddings().weight = generator.get_input_embeddings().weight


def start_from_one_table(generator, discriminator) -> None:
    """Fresh models: copy the discriminator's token table into the generator's, so both start from one table
    (under gdes the discriminator's own part, delta, then starts at zero; tied discards the generator's anyway)."""
    with torch.no_grad():
        generator.get_input_embeddings().weight.copy_(discriminator.get_input_embeddings().weight)


@contextlib.contextmanager
def plain_token_embeddings(discriminator):
    """Within the block, the discriminator's token table is a plain nn.Embedding holding the merged weights
    (gdes: E_G + E_delta), so save_pretrained writes a standard transformers model. No-op when tied."""
    owner, name = _token_embedding_owner(discriminator)
    module = getattr(owner, name)
    if not isinstance(module, DisentangledEmbedding):
        yield
        return
    plain = torch.nn.Embedding.from_pretrained(module.weight.detach().clone(), freeze=False, padding_idx=module.padding_idx)
    setattr(owner, name, plain)
    try:
        yield
    finally:
        setattr(owner, name, module)


class CorrectiveHead(torch.nn.Module):
    """The discriminator's LM head for the corrective term: forward(hidden (N, H), table (V, E)) -> (N, V) logits.

    dense H -> E, GELU, LayerNorm, then the token table (the discriminator's own, passed per call so that under
    gdes it is the merged stop_gradient(E_G) + delta: the term trains delta, never the generator's table) and a
    bias. E: the embedding width (ELECTRA's embedding_size, ModernBERT's hidden_size)."""

    def __init__(self, hidden_size: int, embedding_size: int, vocab_size: int, eps: float = 1e-5):
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, embedding_size)
        self.norm = torch.nn.LayerNorm(embedding_size, eps=eps)
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), table, self.bias)


def corrective_head_for(discriminator) -> CorrectiveHead:
    """A fresh CorrectiveHead sized for a discriminator."""
    c = discriminator.config
    embedding_size = getattr(c, "embedding_size", None) or c.hidden_size
    return CorrectiveHead(c.hidden_size, embedding_size, c.vocab_size, getattr(c, "norm_eps", None) or c.layer_norm_eps)


class ElectraPretraining(torch.nn.Module):
    """forward(input_ids, attention_mask, labels) -> {"loss_sum": {"generator", "discriminator"}, metrics}.

    input_ids: (B, T) the collator's masked input; labels: (B, T) original ids at masked positions, -100
    elsewhere; attention_mask (B, T) for a padded batch, or position_ids, sequence_ids (B, T) and cu_seqlens
    for a packed one (`hfssl.collators.packing`); masked_positions (N,) the collator's flat indices of the
    masked tokens (derived from labels when not given). Metrics: generator_accuracy (per masked token), discriminator_accuracy (per real token),
    discriminator_baseline_accuracy and discriminator_baseline_loss (per real token: the accuracy of always answering
    "original", and lambda x the BCE of always answering the batch's replaced share, i.e. what a discriminator that
    ignores its input scores), replaced_fraction (masked tokens whose sample differs from the original; per masked token),
    and with the corrective term corrective_accuracy (per masked token).
    """

    def __init__(self, generator, discriminator, special_ids: torch.Tensor, generator_weight: float = 1.0,
                 discriminator_weight: float = 50.0, temperature: float = 1.0, embedding_sharing: str = "tied",
                 corrective_weight: float = 0.0, corrective_head: CorrectiveHead | None = None):
        super().__init__()
        share_embeddings(generator, discriminator, embedding_sharing)
        self.generator, self.discriminator = generator, discriminator
        self.generator_weight, self.discriminator_weight, self.temperature = generator_weight, discriminator_weight, temperature
        self.corrective_weight = corrective_weight
        if corrective_weight > 0:
            self.corrective_head = corrective_head or corrective_head_for(discriminator)
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
        disc = self.discriminator
        hidden = disc.base_model(**forward_kwargs(disc, corrupted, **layout)).last_hidden_state  # (B, T, H) or (1, B * T, H)
        disc_logits = RTD_HEADS[disc.config.model_type](disc, hidden).view(input_ids.shape)  # (B, T[, 1]) -> (B, T)
        disc_sum, disc_correct = discriminator_loss(disc_logits, is_replaced, real)
        n_masked = max(positions.numel(), 1)
        replaced_share = is_replaced.sum() / real.sum().clamp_min(1)  # () of the real tokens
        loss_sum = {"generator": self.generator_weight * gen_sum, "discriminator": self.discriminator_weight * disc_sum}
        extra = {}
        if self.corrective_weight > 0:  # the original token at each masked position, from the corrupted input
            at_masked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # (N, H)
            corr_sum, extra["corrective_accuracy"] = masked_lm_loss(self.corrective_head(at_masked, disc.get_input_embeddings().weight), targets)
            loss_sum["corrective"] = self.corrective_weight * corr_sum
        return {
            "loss_sum": loss_sum,
            **extra,
            "generator_accuracy": gen_accuracy,
            "discriminator_accuracy": disc_correct / real.sum().clamp_min(1),
            "discriminator_baseline_accuracy": 1.0 - replaced_share,
            "discriminator_baseline_loss": self.discriminator_weight * prior_entropy(replaced_share),
            "replaced_fraction": is_replaced.sum() / n_masked,
            "padding_fraction": 1.0 - real.float().mean(),
        }
