"""Padding-free batches: the packed layout, and the same loss as the padded batch for every path that packs
(MLM, ELECTRA, text classification), for BERT and the RoBERTa family, with sdpa and eager (flash_attention_2's
varlen arguments are checked on CPU through a reference varlen kernel)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification, ElectraForMaskedLM, ElectraForPreTraining
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hfssl import attention
from hfssl.attention import OFFSET_POSITIONS, PACKABLE, forward_kwargs, packed_attention
from hfssl.collators import MLMCollator
from hfssl.collators.finetune import TextClassificationCollator
from hfssl.collators.packing import PackedLayout, first_fit_rows, pack
from hfssl.errors import ConfigError
from hfssl.finetune.heads import CLASSIFIER_HEADS, PackedTextClassifier, SequenceClassifier
from hfssl.objectives.electra import model as electra_model
from hfssl.objectives.electra.model import ElectraPretraining
from hfssl.objectives.mlm.loss import SparseMaskedLM

V = 120
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=V,
             max_position_embeddings=72, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
LENGTHS = [17, 5, 31, 9, 12, 3, 26]


def _config(model_type, **kw):
    extra = {"embedding_size": 32} if model_type == "electra" else {}
    return AutoConfig.for_model(model_type, **{**SIZES, **extra, **kw})


def _layout(config, capacity=32):
    offset = config.pad_token_id + 1 if config.model_type in OFFSET_POSITIONS else 0
    return PackedLayout(capacity=capacity, position_offset=offset)


def _examples(seed=0):
    g = torch.Generator().manual_seed(seed)
    # [CLS]=2 ... [SEP]=3 around random ids above the special ones
    return [{"input_ids": [2] + torch.randint(5, V, (n - 2,), generator=g).tolist() + [3]} for n in LENGTHS]


def _mlm_collators(config):
    kw = dict(pad_token_id=config.pad_token_id, mask_token_id=4, special_token_ids=torch.tensor([0, 1, 2, 3, 4]),
              replacement_ids=torch.arange(5, V), mlm_probability=0.3)
    return MLMCollator(**kw), MLMCollator(**kw, packing=_layout(config))


# ----------------------------------------------------------------------------------- layout

def test_first_fit_rows_fill_rows_longest_first():
    rows = first_fit_rows([17, 5, 31, 9, 12, 3, 26], 32)
    assert rows == [[2], [6, 1], [0, 4, 5], [3]]
    assert sorted(i for r in rows for i in r) == list(range(7))
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_rows([33], 32)


def test_pack_moves_every_token_and_marks_boundaries():
    lengths = torch.tensor([3, 2, 4])
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [31, 32, 33, 34]])
    out = pack({"input_ids": ids}, lengths, PackedLayout(capacity=5, position_offset=2, multiple_of=1), {"input_ids": 0})
    # rows: [ex2 (4)], [ex0 (3), ex1 (2)]; width 5
    assert out["input_ids"].tolist() == [[31, 32, 33, 34, 0], [11, 12, 13, 21, 22]]
    assert out["position_ids"].tolist() == [[2, 3, 4, 5, 2], [2, 3, 4, 2, 3]]
    assert out["sequence_ids"].tolist() == [[2, 2, 2, 2, -1], [0, 0, 0, 1, 1]]
    assert out["cu_seqlens"].tolist() == [0, 4, 5, 8, 10]  # ex2, row 0's padding, ex0, ex1
    assert out["sequence_starts"].tolist() == [5, 8, 0]  # batch order


def test_rows_rounded_up_with_empty_padding_rows():
    lengths = torch.tensor([3, 2, 4])
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [31, 32, 33, 34]])
    out = pack({"input_ids": ids}, lengths, PackedLayout(capacity=5, multiple_of=1, rows_multiple_of=4), {"input_ids": 0})
    assert out["input_ids"].tolist() == [[31, 32, 33, 34, 0], [11, 12, 13, 21, 22], [0] * 5, [0] * 5]
    assert out["sequence_ids"][2:].eq(-1).all()
    assert out["cu_seqlens"].tolist() == [0, 4, 5, 8, 10, 15, 20]  # each empty row is one padding segment


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_mlm_loss_with_empty_rows_equals_padded(model_type):
    config = _config(model_type)
    torch.manual_seed(0)
    model = SparseMaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").eval())
    padded, _ = _mlm_collators(config)
    layout = _layout(config)
    rounded = MLMCollator(pad_token_id=config.pad_token_id, mask_token_id=4, special_token_ids=torch.tensor([0, 1, 2, 3, 4]),
                          replacement_ids=torch.arange(5, V), mlm_probability=0.3,
                          packing=PackedLayout(layout.capacity, layout.position_offset, rows_multiple_of=8))
    a, b = padded(_examples(), seed=7), rounded(_examples(), seed=7)
    assert b["input_ids"].shape[0] == 8 and b["sequence_ids"][4:].eq(-1).all()  # 4 rows of examples + 4 empty
    tensors = lambda batch: {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    with torch.no_grad():
        out_a, out_b = model(**tensors(a)), model(**tensors(b))
    assert torch.isfinite(out_b["loss_sum"])
    assert out_b["loss_sum"].item() == pytest.approx(out_a["loss_sum"].item(), rel=1e-5)


def test_padding_free_batch_has_little_padding():
    padded, packed = _mlm_collators(_config("bert"))
    examples = _examples() * 8  # 56 examples
    p, q = padded(examples, seed=1), packed(examples, seed=1)
    padding_padded = 1 - p["attention_mask"].float().mean().item()
    padding_packed = (q["sequence_ids"] < 0).float().mean().item()
    assert padding_padded > 0.4
    assert padding_packed < 0.05
    assert q["num_targets"] == p["num_targets"] and q["num_inputs"] == p["num_inputs"]


# ----------------------------------------------------------------------------------- same loss as padded

CUDA_CASE = pytest.param("sdpa-cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("case", ["sdpa", "eager", CUDA_CASE])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "data2vec-text"])
def test_mlm_packed_loss_equals_padded(model_type, case):
    """On CUDA: sdpa's fused kernels with the block-diagonal mask, in bf16 (bf16 tolerance)."""
    device, tolerance = (torch.device("cuda"), 2e-2) if case == "sdpa-cuda" else (torch.device("cpu"), 1e-5)
    config = _config(model_type)
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(config, attn_implementation=case.removesuffix("-cuda")).to(device).eval()
    model = SparseMaskedLM(mlm)
    padded, packed = _mlm_collators(config)
    a, b = padded(_examples(), seed=7), packed(_examples(), seed=7)
    tensors = lambda batch: {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out_a, out_b = model(**tensors(a)), model(**tensors(b))
    assert a["num_targets"] > 10
    assert out_b["loss_sum"].item() == pytest.approx(out_a["loss_sum"].item(), rel=tolerance)
    assert out_b["accuracy"].item() == pytest.approx(out_a["accuracy"].item())
    assert out_b["padding_fraction"].item() < out_a["padding_fraction"].item()


def test_electra_packed_losses_equal_padded(monkeypatch):
    # Sampling draws one Gumbel per masked token in layout order; argmax makes it layout-independent.
    monkeypatch.setattr(electra_model, "sample_replacements", lambda logits, disallowed, t: logits.masked_fill(disallowed, -1e9).argmax(-1))
    config = _config("electra")
    torch.manual_seed(0)
    model = ElectraPretraining(ElectraForMaskedLM(config), ElectraForPreTraining(config), torch.tensor([0, 1, 2, 3, 4])).eval()
    padded, packed = _mlm_collators(config)
    a, b = padded(_examples(), seed=3), packed(_examples(), seed=3)
    with torch.no_grad():
        out_a = model(**{k: v for k, v in a.items() if isinstance(v, torch.Tensor)})
        out_b = model(**{k: v for k, v in b.items() if isinstance(v, torch.Tensor)})
    for term in ("generator", "discriminator"):
        assert out_b["loss_sum"][term].item() == pytest.approx(out_a["loss_sum"][term].item(), rel=1e-5)
    assert out_b["discriminator_accuracy"].item() == pytest.approx(out_a["discriminator_accuracy"].item())


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_text_classification_packed_logits_equal_padded(model_type):
    config = _config(model_type, num_labels=3)
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa").eval()
    examples = [{**e, "labels": i % 3} for i, e in enumerate(_examples())]
    a = TextClassificationCollator(config.pad_token_id)(examples)
    b = TextClassificationCollator(config.pad_token_id, _layout(config))(examples)
    tensors = lambda batch: {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    with torch.no_grad():
        expected = clf(input_ids=a["input_ids"], attention_mask=a["attention_mask"]).logits
        loss_a = SequenceClassifier(clf)(**tensors(a))["loss_sum"]
        out_b = PackedTextClassifier(clf)(**tensors(b))
        _, rows = PackedTextClassifier(clf).predict_step(**tensors(b))
    assert out_b["loss_sum"].item() == pytest.approx(loss_a.item(), rel=1e-5)
    assert torch.allclose(torch.from_numpy(np.stack(rows)), expected, atol=1e-5)  # batch order kept


@pytest.mark.parametrize("model_type", PACKABLE)
def test_every_packable_architecture_gives_the_padded_hidden_states(model_type):
    config = _config(model_type)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").eval()
    padded, packed = _mlm_collators(config)
    a, b = padded(_examples(), seed=0), packed(_examples(), seed=0)
    with torch.no_grad():
        h_a = model.base_model(input_ids=a["input_ids"], attention_mask=a["attention_mask"]).last_hidden_state
        kw = forward_kwargs(model, b["input_ids"], position_ids=b["position_ids"], sequence_ids=b["sequence_ids"], cu_seqlens=b["cu_seqlens"])
        h_b = model.base_model(**kw).last_hidden_state
    real_a = h_a[a["attention_mask"].bool()]  # (N, H) in (example, token) order
    order = torch.argsort(b["sequence_ids"].flatten() * 1000 + b["position_ids"].flatten())
    real_b = h_b.reshape(-1, h_b.shape[-1])[order][(b["sequence_ids"].flatten() >= 0)[order]]
    assert torch.allclose(real_a, real_b, atol=1e-5)
    assert model_type in CLASSIFIER_HEADS


# ----------------------------------------------------------------------------------- flash_attention_2's arguments, on CPU

def _reference_varlen(module, query, key, value, attention_mask, cu_seq_lens_q=None, max_length_q=None, scaling=None, dropout=0.0, **kw):
    """flash_attention_2's varlen contract in plain torch: (1, heads, N, d) inputs, attention within each cu_seqlens segment."""
    assert attention_mask is None and cu_seq_lens_q is not None
    bounds = cu_seq_lens_q.tolist()
    assert max(b - a for a, b in zip(bounds, bounds[1:])) <= max_length_q
    out = torch.cat([F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling)
                     for a, b in zip(bounds, bounds[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def test_flash_varlen_arguments_reach_the_kernel_and_give_the_padded_loss(monkeypatch):
    """The model is told it runs flash_attention_2 (so the batch is flattened and cu_seqlens passed); the
    kernel registered under that name here is a plain-torch varlen reference, so it runs on CPU."""
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _reference_varlen)
    config = _config("roberta")
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").eval()
    padded, packed = _mlm_collators(config)
    a, b = padded(_examples(), seed=5), packed(_examples(), seed=5)
    with torch.no_grad():
        expected = SparseMaskedLM(mlm)(**{k: v for k, v in a.items() if isinstance(v, torch.Tensor)})["loss_sum"]
        mlm.config._attn_implementation_internal = "flash_attention_2"
        kw = forward_kwargs(mlm, b["input_ids"], position_ids=b["position_ids"], sequence_ids=b["sequence_ids"], cu_seqlens=b["cu_seqlens"])
        assert kw["input_ids"].shape == (1, b["input_ids"].numel()) and "attention_mask" not in kw
        got = SparseMaskedLM(mlm)(**{k: v for k, v in b.items() if isinstance(v, torch.Tensor)})["loss_sum"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_eager_mask_is_additive_and_sdpa_mask_boolean():
    sequence_ids = torch.tensor([[0, 0, 1, -1]])
    sdpa = packed_attention("sdpa", sequence_ids, torch.tensor([0, 2, 3, 4], dtype=torch.int32), torch.float32)["attention_mask"]
    eager = packed_attention("eager", sequence_ids, torch.tensor([0, 2, 3, 4], dtype=torch.int32), torch.float32)["attention_mask"]
    assert sdpa.dtype == torch.bool and sdpa.shape == (1, 1, 4, 4)
    assert sdpa[0, 0].tolist() == [[True, True, False, False], [True, True, False, False],
                                   [False, False, True, False], [False, False, False, True]]
    assert torch.equal(eager == 0, sdpa)


# ----------------------------------------------------------------------------------- settings

def test_padding_free_settings_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="distilbert models cannot take packed"):
        attention.packed_layout(AutoConfig.for_model("distilbert"), 32, True)
    assert attention.packed_layout(AutoConfig.for_model("distilbert"), 32, None) is None
    assert attention.packed_layout(_config("bert"), 32, False) is None
    layout = attention.packed_layout(_config("roberta"), 64, None)
    assert (layout.capacity, layout.position_offset) == (64, 2)


def test_unset_padding_free_pads_on_a_gpu_unless_the_kernel_is_varlen(monkeypatch):
    """Measured on an H200: sdpa over packed rows (block-diagonal mask) was slower than padded batches, so
    on CUDA an unset padding_free pads for sdpa/eager and packs only for flash_attention_2 (or when asked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for implementation in ("sdpa", "eager"):
        assert attention.packed_layout(_config("bert", attn_implementation=implementation), 32, None) is None
        assert attention.packed_layout(_config("bert", attn_implementation=implementation), 32, True) is not None
    assert attention.packed_layout(_config("bert", attn_implementation="flash_attention_2"), 32, None) is not None


# ----------------------------------------------------------------------------------- no host reads in the MLM step

@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_mlm_step_gathers_masked_tokens_without_reading_back(layout):
    """The collator finds the masked positions on the CPU; the model gathers them by index. A boolean index
    (nonzero) would be a device-to-host sync per micro-batch on a GPU, and a graph break for torch.compile."""
    config = _config("bert")
    torch.manual_seed(0)
    model = SparseMaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa"))
    padded, packed = _mlm_collators(config)
    batch = (padded if layout == "padded" else packed)(_examples(), seed=2)
    assert torch.equal(batch["masked_positions"], (batch["labels"].flatten() != -100).nonzero().squeeze(1))
    with torch.profiler.profile() as prof:
        model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})["loss_sum"].backward()
    assert [e.key for e in prof.key_averages() if e.key in ("aten::nonzero", "aten::masked_select")] == []
