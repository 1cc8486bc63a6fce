"""ELECTRA's pieces: loss terms against hand computations, sampling never special tokens, a sample equal
to the original counts as original, shared embeddings (tied and gradient-disentangled), the paper's generator
sizes, config checks."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import (ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, ModernBertConfig, ModernBertForMaskedLM,
                          ModernBertForTokenClassification)

from hfssl.errors import ConfigError, RollbackRequested
from hfssl.objectives import load_config
from hfssl.objectives.electra.loss import discriminator_loss, prior_entropy, replaced_labels, sample_replacements
from hfssl.objectives.electra.model import (CorrectiveHead, DisentangledEmbedding, ElectraPretraining, plain_token_embeddings,
                                            start_from_one_table)
from hfssl.objectives.electra.objective import ElectraObjective, generator_config

V, SPECIAL = 40, [0, 1, 2, 3]


def _models(seed=0, layout="electra"):
    torch.manual_seed(seed)
    if layout == "modernbert":  # pre-LN: one-logit token classifier + a 1-layer generator of the same width
        disc = ModernBertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=16, local_attention=16, num_labels=1, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, cls_token_id=1, sep_token_id=2)
        return ModernBertForMaskedLM(generator_config(disc, 1.0, 0.5)), ModernBertForTokenClassification(disc)
    disc = ElectraConfig(vocab_size=V, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    gen = generator_config(disc, 0.5, 1.0)
    return ElectraForMaskedLM(gen), ElectraForPreTraining(disc)


def test_discriminator_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 9.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding: never scored
    loss, correct = discriminator_loss(logits, labels, mask)
    expected = math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert correct.item() == 2  # 2.0 -> replaced (right), -1.0 -> original (right), 0.5 -> replaced (wrong)
    # no data-dependent shape (boolean indexing): no device sync on a GPU, one graph under torch.compile
    torch._dynamo.reset()
    explained = torch._dynamo.explain(discriminator_loss)(logits, labels, mask)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_a_sample_equal_to_the_original_counts_as_original():
    original = torch.tensor([[5, 6, 7, 8, 0]])
    corrupted = torch.tensor([[5, 9, 7, 10, 0]])  # position 2 was masked but the sample was 7 again
    labels = replaced_labels(original, corrupted, torch.tensor([[1, 1, 1, 1, 0]]))
    assert labels.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]]


def test_samples_are_never_special_tokens_and_follow_the_softmax():
    torch.manual_seed(0)
    logits = torch.zeros(20000, V)
    logits[:, SPECIAL] = 50.0  # the generator "prefers" special tokens: they must still never come out
    logits[:, 10] = 2.0
    disallowed = torch.zeros(V, dtype=torch.bool)
    disallowed[SPECIAL] = True
    sampled = sample_replacements(logits, disallowed)
    assert not torch.isin(sampled, torch.tensor(SPECIAL)).any()
    # Among the allowed ids, id 10 has weight e^2 against 1 for each of the other 35.
    p10 = math.exp(2) / (math.exp(2) + (V - len(SPECIAL) - 1))
    assert (sampled == 10).float().mean().item() == pytest.approx(p10, abs=0.015)


@pytest.mark.parametrize("layout", ["electra", "modernbert"])
def test_forward_terms_equal_a_hand_computation(layout):
    gen, disc = _models(layout=layout)
    model = ElectraPretraining(gen, disc, torch.tensor(SPECIAL), generator_weight=1.0, discriminator_weight=50.0)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0], [1, 11, 12, 13, 2, 0, 0, 0]])
    attention = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 5], labels[1, 3] = 6, 9, 13
    masked = ids.clone()
    masked[labels != -100] = 4  # [MASK]
    torch.manual_seed(123)
    out = model(masked, attention, labels)

    sel = labels != -100
    with torch.no_grad():
        gen_logits = gen(input_ids=masked, attention_mask=attention).logits[sel]  # full head: same numbers as the sparse one
        gen_ce = torch.nn.functional.cross_entropy(gen_logits, labels[sel], reduction="sum")
        torch.manual_seed(123)  # the same draw the forward made
        disallowed = torch.zeros(V, dtype=torch.bool)
        disallowed[SPECIAL] = True
        sampled = sample_replacements(gen_logits, disallowed)
        corrupted = ids.clone()
        corrupted[sel] = sampled
        d_logits = disc(input_ids=corrupted, attention_mask=attention).logits.view(ids.shape)  # modernbert: (B, T, 1)
        real = attention.bool()
        y = (corrupted != ids).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(d_logits[real], y[real], reduction="sum")
    assert out["loss_sum"]["generator"].item() == pytest.approx(gen_ce.item(), rel=1e-5)
    assert out["loss_sum"]["discriminator"].item() == pytest.approx(50.0 * bce.item(), rel=1e-5)
    assert out["replaced_fraction"].item() == pytest.approx(y[sel].mean().item())
    # always answering "original" scores the share of real tokens left as they were
    share = y[real].mean().item()
    assert out["discriminator_baseline_accuracy"].item() == pytest.approx(1 - share)
    # ... and ignoring the input costs lambda x the binary entropy of the replaced share, per real token
    assert out["discriminator_baseline_loss"].item() == pytest.approx(
        50.0 * -(share * math.log(share) + (1 - share) * math.log(1 - share)), rel=1e-5)
    assert list(out["loss_sum"]) == ["generator", "discriminator"]


@pytest.mark.parametrize("layout,sharing", [("electra", "tied"), ("modernbert", "gdes")])
def test_corrective_term_by_hand_and_what_it_trains(layout, sharing):
    """corrective_weight > 0: a third term, the discriminator's cross-entropy of the original token at the masked
    positions through its own head tied to its token table; the other two terms are unchanged. Under gdes it trains
    delta and never the generator's table."""
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0], [1, 11, 12, 13, 2, 0, 0, 0]])
    attention = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 5], labels[1, 3] = 6, 9, 13
    masked = ids.masked_fill(labels != -100, 4)
    outs, models = {}, {}
    for weight in (0.0, 2.0):
        gen, disc = _models(layout=layout)
        models[weight] = model = ElectraPretraining(gen, disc, torch.tensor(SPECIAL), embedding_sharing=sharing, corrective_weight=weight)
        torch.manual_seed(7)
        outs[weight] = model(masked, attention, labels)
    off, on = outs[0.0], outs[2.0]
    assert list(off["loss_sum"]) == ["generator", "discriminator"] and not hasattr(models[0.0], "corrective_head")
    assert list(on["loss_sum"]) == ["generator", "discriminator", "corrective"]
    for term in ("generator", "discriminator"):
        assert on["loss_sum"][term].item() == pytest.approx(off["loss_sum"][term].item(), rel=1e-6)
    head = model.corrective_head
    assert isinstance(head, CorrectiveHead)
    # By hand: the same draw gives the same corrupted input; hidden states of the discriminator's encoder.
    sel = labels != -100
    with torch.no_grad():
        torch.manual_seed(7)
        gen_logits = gen(input_ids=masked, attention_mask=attention).logits[sel]
        disallowed = torch.zeros(V, dtype=torch.bool)
        disallowed[SPECIAL] = True
        corrupted = ids.clone()
        corrupted[sel] = sample_replacements(gen_logits, disallowed, model.temperature)
        hidden = disc.base_model(input_ids=corrupted, attention_mask=attention).last_hidden_state[sel]  # (3, H)
        table = _table(disc)  # (V, E): the discriminator's own (merged under gdes)
        x = torch.nn.functional.layer_norm(torch.nn.functional.gelu(hidden @ head.dense.weight.T + head.dense.bias),
                                           (table.shape[1],), head.norm.weight, head.norm.bias, head.norm.eps)
        ce = torch.nn.functional.cross_entropy(x @ table.T + head.bias, labels[sel], reduction="sum")
    assert on["loss_sum"]["corrective"].item() == pytest.approx(2.0 * ce.item(), rel=1e-5)
    assert 0.0 <= on["corrective_accuracy"].item() <= 1.0
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    model(masked, attention, labels)["loss_sum"]["corrective"].backward()
    encoder_grad = sum(p.grad.abs().sum() for n, p in disc.base_model.named_parameters() if p.grad is not None and "embeddings" not in n)
    assert encoder_grad > 0  # the term reaches the discriminator's encoder
    assert all(p.grad is None for p in gen.base_model.encoder.parameters()) if layout == "electra" else \
        all(p.grad is None for p in gen.model.layers.parameters())  # ... and never the generator (no gradient through sampling)
    if sharing == "gdes":
        emb = disc.get_input_embeddings()
        assert emb.delta.grad is not None and emb.delta.grad.abs().sum() > 0
        assert _table(gen).grad is None or not _table(gen).grad.any()


def test_embeddings_are_shared_and_the_generator_head_stays_tied():
    gen, disc = _models()
    ElectraPretraining(gen, disc, torch.tensor(SPECIAL))
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    # The optimizer sees the shared table once and updates it with both models' gradients.
    params = list(torch.nn.ModuleDict({"g": gen, "d": disc}).parameters())
    shared = disc.electra.embeddings.word_embeddings.weight
    assert sum(p is shared for p in params) == 1 and len({id(p) for p in params}) == len(params)


def test_modernbert_generator_shares_the_embeddings_and_is_shallower():
    gen, disc = _models(layout="modernbert")
    assert (gen.config.num_hidden_layers, gen.config.hidden_size, len(gen.config.layer_types)) == (1, 32, 1)
    ElectraPretraining(gen, disc, torch.tensor(SPECIAL))
    assert gen.model.embeddings is disc.model.embeddings
    assert gen.decoder.weight is disc.model.embeddings.tok_embeddings.weight
    params = list(torch.nn.ModuleDict({"g": gen, "d": disc}).parameters())
    assert len({id(p) for p in params}) == len(params)
    with pytest.raises(ConfigError, match="generator_layers"):
        generator_config(disc.config, 0.25, 1.0)  # no embedding projection: a narrower generator cannot share them


def _table(model):
    return model.get_input_embeddings().weight


@pytest.mark.parametrize("layout", ["electra", "modernbert"])
def test_gdes_each_loss_trains_only_its_own_table(layout):
    """Gradient-disentangled sharing: the discriminator reads stop_gradient(E_G) + delta, so its loss reaches delta
    (and never E_G), while the generator's loss reaches E_G (and never delta)."""
    gen, disc = _models(layout=layout)
    e_g, e_d = _table(gen).detach().clone(), _table(disc).detach().clone()
    model = ElectraPretraining(gen, disc, torch.tensor(SPECIAL), embedding_sharing="gdes")
    emb = disc.get_input_embeddings()
    assert isinstance(emb, DisentangledEmbedding) and emb.shared is gen.get_input_embeddings()
    assert torch.equal(emb.delta, e_d - e_g) and torch.allclose(emb.weight, e_d)  # the discriminator's table is kept
    assert gen.get_output_embeddings().weight is _table(gen)  # generator head tied to its own table
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0], [1, 11, 12, 13, 2, 0, 0, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 5], labels[1, 3] = 6, 9, 13
    masked = ids.masked_fill(labels != -100, 4)
    for term, trained, untouched in (("discriminator", emb.delta, _table(gen)), ("generator", _table(gen), emb.delta)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        model(masked, (ids != 0).long(), labels)["loss_sum"][term].backward()
        assert trained.grad is not None and trained.grad.abs().sum() > 0, term
        assert untouched.grad is None or not untouched.grad.any(), term
    # One parameter list for the optimizer: each table once, delta its own.
    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params) and sum(p is emb.delta for p in params) == 1


@pytest.mark.parametrize("layout", ["electra", "modernbert"])
def test_a_fresh_gdes_pair_starts_from_one_table(layout):
    gen, disc = _models(layout=layout)
    assert not torch.equal(_table(gen), _table(disc))  # two random initializations
    start_from_one_table(gen, disc)
    ElectraPretraining(gen, disc, torch.tensor(SPECIAL), embedding_sharing="gdes")
    emb = disc.get_input_embeddings()
    assert not emb.delta.any() and torch.equal(emb.weight, _table(gen))


@pytest.mark.parametrize("layout", ["electra", "modernbert"])
def test_gdes_saves_a_plain_discriminator_that_continues_exactly(layout, tmp_path):
    gen, disc = _models(layout=layout)
    model = ElectraPretraining(gen, disc, torch.tensor(SPECIAL), embedding_sharing="gdes")
    with torch.no_grad():
        disc.get_input_embeddings().delta.normal_()  # as after training: E_D != E_G
    merged = disc.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0]])
    with torch.no_grad():
        before = disc(input_ids=ids, attention_mask=(ids != 0).long()).logits
    with plain_token_embeddings(disc):
        assert type(disc.get_input_embeddings()) is torch.nn.Embedding and torch.equal(_table(disc), merged)
        disc.save_pretrained(tmp_path / "d")
    gen.save_pretrained(tmp_path / "g")
    assert isinstance(disc.get_input_embeddings(), DisentangledEmbedding)  # restored after the save
    loaded_disc = type(disc).from_pretrained(tmp_path / "d")
    loaded_gen = type(gen).from_pretrained(tmp_path / "g")
    assert torch.equal(_table(loaded_disc), merged)  # a plain transformers model holding E_G + delta
    with torch.no_grad():
        assert torch.allclose(loaded_disc(input_ids=ids, attention_mask=(ids != 0).long()).logits, before, atol=1e-6)
    # Continuing: delta is rebuilt as the saved discriminator's table minus the generator's.
    ElectraPretraining(loaded_gen, loaded_disc, torch.tensor(SPECIAL), embedding_sharing="gdes")
    emb = loaded_disc.get_input_embeddings()
    assert torch.allclose(emb.weight, merged, atol=1e-6) and torch.allclose(emb.delta, merged - _table(gen), atol=1e-6)
    assert model is not None


def test_a_saved_corrective_head_is_continued_and_a_missing_one_starts_fresh(tmp_path):
    from safetensors.torch import save_file

    from hfssl.objectives.electra.objective import CORRECTIVE_HEAD

    _, disc = _models(layout="modernbert")
    torch.manual_seed(3)
    trained = {k: torch.randn_like(v) for k, v in CorrectiveHead(32, 32, V).state_dict().items()}
    (tmp_path / "saved").mkdir()
    save_file(trained, str(tmp_path / "saved" / CORRECTIVE_HEAD))
    build = ElectraObjective._corrective_head
    cfg = SimpleNamespace(corrective_weight=1.0, model_name_or_path=str(tmp_path / "saved"))
    head = build(SimpleNamespace(cfg=cfg), disc)
    assert all(torch.equal(head.state_dict()[k], v) for k, v in trained.items())
    fresh = build(SimpleNamespace(cfg=SimpleNamespace(corrective_weight=1.0, model_name_or_path=str(tmp_path))), disc)
    assert not torch.equal(fresh.bias, trained["bias"]) and not fresh.bias.any()  # a fresh head: zero bias
    assert build(SimpleNamespace(cfg=SimpleNamespace(corrective_weight=0.0, model_name_or_path=None)), disc) is None


def test_generator_config_follows_the_paper():
    disc = ElectraConfig(hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024, embedding_size=128)
    small = generator_config(disc, 0.25, 1.0)  # ELECTRA-small: 1/4 width
    assert (small.hidden_size, small.num_attention_heads, small.intermediate_size, small.num_hidden_layers, small.embedding_size) == (64, 1, 256, 12, 128)
    base = generator_config(ElectraConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                          embedding_size=768), 1 / 3, 1.0)
    assert (base.hidden_size, base.num_attention_heads, base.intermediate_size) == (256, 4, 1024)
    # 512 x 1/3 = 171 wide with 2 heads: the heads cannot split it (it crashed at the first forward); refused, named.
    with pytest.raises(ConfigError, match="generator_size 0.333333 makes the generator 171 wide .* 2 heads"):
        generator_config(ElectraConfig(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048,
                                       embedding_size=128), 1 / 3, 1.0)


def test_config_defaults_and_checks():
    cfg = load_config(["--objective", "electra"])
    assert (cfg.model_type, cfg.mask_replace_prob, cfg.random_replace_prob, cfg.discriminator_weight) == ("electra", 0.85, 0.0, 50.0)
    with pytest.raises(ConfigError, match="model_type must be 'electra'"):
        load_config(["--objective", "electra", "--model_type", "bert"])
    with pytest.raises(ConfigError, match="generator_size"):
        load_config(["--objective", "electra", "--generator_size", "1.5"])
    assert (cfg.generator_size, cfg.generator_layers) == (0.25, 1.0)  # the paper's: 1/4 width, full depth
    pre_ln = load_config(["--objective", "electra", "--model_type", "modernbert"])
    assert (pre_ln.generator_size, pre_ln.generator_layers) == (1.0, 0.25)  # same width (shared embeddings), 1/4 depth
    with pytest.raises(ConfigError, match="generator_layers"):
        load_config(["--objective", "electra", "--model_type", "modernbert", "--generator_size", "0.25"])
    assert cfg.embedding_sharing == "tied"  # the paper's
    with pytest.raises(ConfigError, match="embedding_sharing"):
        load_config(["--objective", "electra", "--embedding_sharing", "shared"])
    assert cfg.corrective_weight == 0.0  # off: the paper's ELECTRA
    with pytest.raises(ConfigError, match="corrective_weight must be >= 0"):
        load_config(["--objective", "electra", "--corrective_weight", "-1"])


def test_prior_entropy_is_the_loss_of_the_best_constant_answer():
    p = torch.tensor(0.15)
    best = torch.nn.functional.binary_cross_entropy(torch.full((20,), 0.15), (torch.arange(20) < 3).float())  # 3/20 replaced
    assert prior_entropy(p).item() == pytest.approx(best.item(), rel=1e-6)
    assert prior_entropy(torch.tensor(0.0)).item() == pytest.approx(0.0, abs=1e-9)


def _guarded(on_collapse, tmp_path):
    cfg = SimpleNamespace(on_collapse=on_collapse, min_discriminator_gain=0.02, collapse_check_after=3, collapse_patience=2,
                          output_dir=str(tmp_path))
    obj = ElectraObjective.__new__(ElectraObjective)  # only the health check: no data or model
    obj.cfg = cfg
    from hfssl.objectives.collapse import CollapseGuard

    obj.guard = CollapseGuard(cfg)
    return obj


def _row(step, loss, baseline=20.5):
    return {"step": step, "loss_discriminator": loss, "discriminator_baseline_loss": baseline}


def test_a_discriminator_at_the_label_prior_is_reported(tmp_path, caplog):
    warn = _guarded("warn", tmp_path)
    stuck = [_row(s, 20.3) for s in range(1, 7)]  # 1% better than ignoring the input (< 2%); steps 1-3 not checked
    with caplog.at_level(logging.WARNING):
        assert [warn.check_health([r]) for r in stuck] == [None] * 6
    assert sum("ELECTRA discriminator collapse at step 5" in m for m in caplog.messages) == 1  # once, after 2 in a row

    stop = _guarded("stop", tmp_path)
    assert stop.check_health([_row(4, 20.4)]) is None
    assert stop.check_health([_row(5, 16.9)]) is None  # 18% better: learning, the streak restarts
    assert stop.check_health([_row(6, 20.2)]) is None
    assert "Stopped (on_collapse=stop)" in stop.check_health([_row(7, 20.2)])
    assert stop.check_health([_row(8, float("nan"))]) is None  # a skipped update says nothing
    assert stop.state_dict() == {"collapse_streak": 2, "collapse_reported": 0, "last_healthy_step": 5}

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "hfssl_checkpoint.json").write_text("{}")
    back = _guarded("rollback", tmp_path)
    assert back.check_health([_row(5, 15.0)]) is None
    back.check_health([_row(6, 20.5)])
    with pytest.raises(RollbackRequested) as raised:
        back.check_health([_row(7, 20.5)])
    assert raised.value.checkpoint == str(tmp_path / "checkpoint-4")
