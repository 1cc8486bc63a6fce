"""wav2vec 2.0 objective: loss parity with transformers, the collator's crops/labels/masks/negatives,
the Gumbel schedule and its resumable state, feature-encoder gradient scaling, collapse handling."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.objectives import load_config
from hfssl.data.audio.geometry import num_frames
from hfssl.objectives.wav2vec2.loss import gumbel_temperature, perplexity_of
from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining
from hfssl.objectives.wav2vec2.objective import Wav2Vec2Objective

ROOT = Path(__file__).resolve().parents[2]
UNLABELED = ROOT / "tests" / "fixtures" / "speech" / "unlabeled"
KERNEL, STRIDE = (10, 3, 3), (5, 2, 2)  # 20 samples per frame: short synthetic inputs still give ~100 frames


def tiny_config(**kw) -> Wav2Vec2Config:
    base = dict(conv_dim=(32, 32, 32), conv_kernel=KERNEL, conv_stride=STRIDE, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                num_codevector_groups=2, num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=32,
                mask_time_prob=0.65, num_negatives=10, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1)
    base.update(kw)
    return Wav2Vec2Config(**base)


def make_batch(collator, lengths, seed=0):
    rng = np.random.default_rng(seed)
    examples = [{"input_values": rng.standard_normal(n).astype(np.float32), "id": i} for i, n in enumerate(lengths)]
    return collator(examples, seed=seed)


def _flat(negatives: torch.Tensor) -> torch.Tensor:
    """(B, T, K) per-utterance time indices -> Wav2Vec2ForPreTraining's flattened b * T + t."""
    batch, frames, _ = negatives.shape
    return negatives + (torch.arange(batch) * frames)[:, None, None]


def tensors(batch):
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------- parity with transformers

@pytest.mark.parametrize("layer_norm", [False, True], ids=["group-norm-no-attention-mask", "stable-layer-norm-attention-mask"])
def test_contrastive_and_diversity_losses_match_transformers(layer_norm):
    torch.manual_seed(0)
    extra = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True) if layer_norm else {}
    model = Wav2Vec2ForPreTraining(tiny_config(**extra)).eval()  # eval: argmax codes, no dropout, on both sides
    ours = Wav2Vec2Pretraining(model, feature_grad_scale=0.1, feature_penalty_weight=10.0, diversity_loss_weight=0.1,
                               logits_temperature=0.1).eval()
    collator = AudioPretrainingCollator(KERNEL, STRIDE, max_samples=None, do_normalize=True, return_attention_mask=layer_norm,
                                        num_negatives=10)
    batch = make_batch(collator, [2400, 1900, 2207], seed=3)  # padded batch of unequal lengths
    n = batch["num_targets"]
    assert n > 0 and ("attention_mask" in batch) == layer_norm
    with torch.no_grad():
        out = ours(**tensors(batch))
        ref = model(batch["input_values"], attention_mask=batch.get("attention_mask"),
                    mask_time_indices=batch["mask_time_indices"],
                    sampled_negative_indices=_flat(batch["sampled_negative_indices"]))
    torch.testing.assert_close(out["contrastive_loss"] * n, ref.contrastive_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["diversity_loss"] * n, ref.diversity_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["codebook_perplexity"], ref.codevector_perplexity, rtol=1e-5, atol=1e-5)
    expected_sum = ref.contrastive_loss + 0.1 * ref.diversity_loss + 10.0 * out["feature_penalty"] * n
    torch.testing.assert_close(out["loss_sum"], expected_sum, rtol=1e-5, atol=1e-4)


def test_negatives_identical_to_the_positive_are_ignored():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_config()).eval()
    with torch.no_grad():  # one code per group for every frame: every negative equals its positive
        model.quantizer.weight_proj.weight.zero_()
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[0] = 5.0
        model.quantizer.weight_proj.bias[16] = 5.0
    ours = Wav2Vec2Pretraining(model).eval()
    collator = AudioPretrainingCollator(KERNEL, STRIDE, num_negatives=10)
    batch = make_batch(collator, [2000, 2000])
    with torch.no_grad():
        out = ours(**tensors(batch))
        ref = model(batch["input_values"], mask_time_indices=batch["mask_time_indices"],
                    sampled_negative_indices=_flat(batch["sampled_negative_indices"]))
    assert out["contrastive_loss"].item() == 0.0 and ref.contrastive_loss.item() == 0.0
    assert out["perplexity_g0"].item() == pytest.approx(1.0) and out["perplexity_g1"].item() == pytest.approx(1.0)


def test_feature_encoder_gradient_is_scaled():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_config())
    full = Wav2Vec2Pretraining(copy.deepcopy(model), feature_grad_scale=1.0).train()
    scaled = Wav2Vec2Pretraining(copy.deepcopy(model), feature_grad_scale=0.1).train()
    batch = tensors(make_batch(AudioPretrainingCollator(KERNEL, STRIDE, num_negatives=10), [2400, 2000]))
    for module in (full, scaled):
        torch.manual_seed(7)  # same dropout and Gumbel noise on both sides
        module(**batch)["loss_sum"].backward()
    conv_full = dict(full.model.wav2vec2.feature_extractor.named_parameters())
    conv_scaled = dict(scaled.model.wav2vec2.feature_extractor.named_parameters())
    for name, p in conv_full.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        # float32 sums in another order: tolerance relative to the layer's largest gradient
        torch.testing.assert_close(conv_scaled[name].grad, 0.1 * p.grad, rtol=1e-3, atol=1e-4 * 0.1 * p.grad.abs().max().item())
    # Everything after the feature encoder is untouched by the scaling.
    torch.testing.assert_close(scaled.model.project_hid.weight.grad, full.model.project_hid.weight.grad)
    torch.testing.assert_close(scaled.model.quantizer.codevectors.grad, full.model.quantizer.codevectors.grad)


def test_perplexity_has_a_finite_gradient_where_a_code_probability_underflows():
    logits = torch.tensor([[0.0, 1.0, -200.0], [2.0, 2.0, 2.0]], requires_grad=True)
    probs = logits.softmax(-1)
    assert probs[0, 2].item() == 0.0  # underflowed in float32
    ppl = perplexity_of(probs)
    p0 = probs[0, :2].detach()
    torch.testing.assert_close(ppl.detach(), torch.stack([torch.exp(-(p0 * p0.log()).sum()), torch.tensor(3.0)]))
    ppl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().max().item() < 1e-6  # uniform: perplexity is at its maximum
    assert logits.grad[0, 2].item() == 0.0 and logits.grad[0, 0].item() > 0  # raising the rarer code raises perplexity


def test_gradients_stay_finite_when_the_quantizer_logits_are_extreme():
    """The GPU failure this guards against: in bf16, a few updates in, some code's softmax underflows to 0 and
    the perplexity's gradient was 0/0, so every gradient was NaN and the updates were skipped."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_config())
    with torch.no_grad():
        model.quantizer.weight_proj.weight.mul_(1e4)  # (G*V, C): logits far apart, most softmax entries exactly 0
    module = Wav2Vec2Pretraining(model).train()
    batch = tensors(make_batch(AudioPretrainingCollator(KERNEL, STRIDE, num_negatives=10), [2400, 2000]))
    out = module(**batch)
    out["loss_sum"].backward()
    assert torch.isfinite(out["loss_sum"])
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []
    assert module.model.quantizer.weight_proj.weight.grad.abs().sum() > 0


def test_train_mode_loss_is_finite_and_reproducible_under_a_seed():
    torch.manual_seed(0)
    module = Wav2Vec2Pretraining(Wav2Vec2ForPreTraining(tiny_config())).train()
    batch = tensors(make_batch(AudioPretrainingCollator(KERNEL, STRIDE, num_negatives=10), [2400, 2000]))
    torch.manual_seed(5)
    a = module(**batch)
    torch.manual_seed(5)
    b = module(**batch)
    assert torch.isfinite(a["loss_sum"]) and a["loss_sum"].item() == b["loss_sum"].item()
    assert 0.0 <= a["accuracy"].item() <= 1.0 and 0.3 < a["masked_fraction"].item() < 0.7


# ----------------------------------------------------------------------------------- collator

def test_crop_is_seeded_and_a_contiguous_slice():
    collator = AudioPretrainingCollator(KERNEL, STRIDE, max_samples=1000, do_normalize=False, num_negatives=5)
    wave = np.arange(5000, dtype=np.float32)
    a = collator([{"input_values": wave}, {"input_values": wave[:700]}], seed=11)
    b = collator([{"input_values": wave}, {"input_values": wave[:700]}], seed=11)
    starts = {int(collator([{"input_values": wave}], seed=s)["input_values"][0, 0]) for s in range(20)}
    assert torch.equal(a["input_values"], b["input_values"]) and torch.equal(a["mask_time_indices"], b["mask_time_indices"])
    assert a["input_values"].shape == (2, 1000)
    first = a["input_values"][0]
    assert torch.equal(first, torch.arange(first[0].item(), first[0].item() + 1000))  # contiguous
    assert torch.equal(a["input_values"][1, :700], torch.from_numpy(wave[:700])) and (a["input_values"][1, 700:] == 0).all()
    assert len(starts) > 10  # the offset depends on the seed
    assert a["num_inputs"] == pytest.approx(1700 / 16000)


def test_normalization_matches_the_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    wave = np.random.default_rng(0).standard_normal(3000).astype(np.float32) * 0.3 + 0.1
    collator = AudioPretrainingCollator(KERNEL, STRIDE, do_normalize=True, num_negatives=5)
    ours = collator([{"input_values": wave}], seed=0)["input_values"][0].numpy()
    ref = Wav2Vec2FeatureExtractor(do_normalize=True)(wave, sampling_rate=16000).input_values[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_frame_labels_are_cropped_with_the_audio():
    stride = int(np.prod(STRIDE))
    collator = AudioPretrainingCollator(KERNEL, STRIDE, max_samples=1000, do_normalize=False, num_negatives=0)
    examples = []
    for n in (6000, 4321, 800):
        frames = num_frames(n, KERNEL, STRIDE)
        examples.append({"input_values": np.arange(n, dtype=np.float32), "frame_labels": np.arange(frames, dtype=np.int64) + 1000})
    for seed in range(5):
        batch = collator(examples, seed=seed)
        labels, lengths = batch["labels"], batch["frame_lengths"]
        assert "sampled_negative_indices" not in batch
        for b in range(3):
            offset = int(batch["input_values"][b, 0])
            assert offset % stride == 0  # aligned crops keep labels exact
            real = int(lengths[b])
            assert torch.equal(labels[b, :real], torch.arange(real) + 1000 + offset // stride)
            assert (labels[b, real:] == -100).all()
        assert lengths[2] == num_frames(800, KERNEL, STRIDE) and lengths[0] == num_frames(1000, KERNEL, STRIDE)


def test_masks_cover_only_real_frames_and_negatives_are_other_masked_frames():
    collator = AudioPretrainingCollator(KERNEL, STRIDE, max_samples=None, num_negatives=20, return_attention_mask=True)
    batch = make_batch(collator, [3000, 1500, 700, 2500], seed=9)
    mask, neg, lengths = batch["mask_time_indices"], batch["sampled_negative_indices"], batch["frame_lengths"]
    frames = torch.arange(mask.shape[1])
    assert not (mask & (frames[None] >= lengths[:, None])).any()  # no masked padding
    assert (mask.sum(1) > 0).all() and batch["num_targets"] == int(mask.sum())
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([3000, 1500, 700, 2500]))
    b, t = mask.nonzero(as_tuple=True)
    chosen = neg[b, t]  # (N, K)
    assert (chosen != t[:, None]).all()  # never the positive
    assert mask[b[:, None].expand_as(chosen), chosen].all()  # always a masked frame of the same utterance
    assert mask.float().sum() / lengths.sum() == pytest.approx(0.5, abs=0.15)


# ----------------------------------------------------------------------------------- the objective's state

@pytest.fixture(scope="module")
def objective(tmp_path_factory):
    out = tmp_path_factory.mktemp("w2v2")
    cfg = load_config([str(ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml"), "--train_dir", str(UNLABELED),
                       "--output_dir", str(out), "--gumbel_temperature_start", "2.0", "--gumbel_temperature_end", "0.5", "--gumbel_temperature_decay", "0.9",
                       "--collapse_patience", "3"])
    return Wav2Vec2Objective(cfg)


@pytest.mark.parametrize("norm, penalty, scale", [("group", 10.0, 0.1), ("layer", 0.0, 1.0)])
def test_unset_loss_weights_are_fairseqs_for_the_feature_encoder_layout(tmp_path, norm, penalty, scale):
    # fairseq base (group norm): penalty 10, gradient x0.1; large (layer norm): 0, x1.0. Base's weights on the
    # layer-norm layout collapsed the codebook of a 2-minute GPU run.
    cfg = load_config([str(ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml"), "--train_dir", str(UNLABELED),
                       "--output_dir", str(tmp_path), "--feature_penalty_weight", "none", "--feature_grad_scale", "none",
                       "--config_overrides", f"feat_extract_norm={norm},do_stable_layer_norm={norm == 'layer'}"])
    assert (cfg.feature_penalty_weight, cfg.feature_grad_scale) == (None, None)
    model = Wav2Vec2Objective(cfg).model
    assert model.model.config.feat_extract_norm == norm
    assert (model.feature_penalty_weight, model.feature_grad_scale) == (penalty, scale)
    assert (cfg.feature_penalty_weight, cfg.feature_grad_scale) == (penalty, scale)  # what hfssl_config.yaml records


def test_loss_weights_given_are_kept_on_either_layout(tmp_path):
    cfg = load_config([str(ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml"), "--train_dir", str(UNLABELED),
                       "--output_dir", str(tmp_path), "--feature_penalty_weight", "2.5", "--feature_grad_scale", "0.5"])
    model = Wav2Vec2Objective(cfg).model
    assert model.model.config.feat_extract_norm == "layer"
    assert (model.feature_penalty_weight, model.feature_grad_scale) == (2.5, 0.5)


def test_gumbel_schedule_values():
    cfg = load_config(["--objective", "wav2vec2", "--train_dir", str(UNLABELED)])
    assert gumbel_temperature(cfg, 0) == 2.0
    assert gumbel_temperature(cfg, 1000) == pytest.approx(2.0 * 0.999995 ** 1000)
    assert gumbel_temperature(cfg, 100_000) == pytest.approx(2.0 * 0.999995 ** 100_000)  # 1.213
    assert gumbel_temperature(cfg, 400_000) == 0.5  # floor reached after ~277k updates


def test_gumbel_temperature_follows_updates_and_round_trips(objective, tmp_path):
    obj = objective
    obj.load_state_dict({"gumbel_temperature": 2.0})
    logged = [obj.on_update(step, 100)["gumbel_temperature"] for step in range(1, 6)]
    assert logged == pytest.approx([2.0 * 0.9 ** k for k in range(5)])
    assert obj.model.gumbel_temperature.item() == pytest.approx(2.0 * 0.9 ** 5)
    state = obj.state_dict()
    nxt = obj.on_update(6, 100)
    obj.load_state_dict(state)  # as a resume does
    assert obj.model.gumbel_temperature.item() == pytest.approx(2.0 * 0.9 ** 5)
    assert obj.on_update(6, 100) == nxt
    assert obj.on_update(1000, 1000)["gumbel_temperature"] >= 0.5 and obj.model.gumbel_temperature.item() == 0.5
    assert "gumbel_temperature" not in obj.model.state_dict()  # model weights stay transformers'


def test_collapse_is_detected_and_handled(objective, caplog):
    obj = objective
    healthy = [{"step": s, "perplexity_g0": 20.0, "perplexity_g1": 18.0, "accuracy": 0.3} for s in (1, 2)]
    collapsed = [{"step": s, "perplexity_g0": 1.1, "perplexity_g1": 17.0, "accuracy": 0.9} for s in (3, 4, 5)]
    for mode in ("warn", "stop", "rollback"):
        obj.cfg.on_collapse = mode
        obj.load_state_dict({"gumbel_temperature": 2.0})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hfssl"):
            results = [obj.check_health([row]) for row in healthy + collapsed]
            assert results[:4] == [None] * 4  # patience 3: the third collapsed update triggers
            if mode == "warn":
                assert obj.check_health([{**collapsed[-1], "step": 6}]) is None  # still collapsed: training goes on
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if mode == "warn":
            assert results[4] is None
            # Warned once, at step 5, naming the group; not again at step 6 while the collapse lasts.
            assert len(warnings) == 1, warnings
            assert "Codebook collapse at step 5" in warnings[0] and "perplexity_g0" in warnings[0] and "on_collapse=warn" in warnings[0]
        elif mode == "stop":
            assert "Codebook collapse at step 5" in results[4] and "perplexity_g0" in results[4] and "on_collapse=stop" in results[4]
        else:
            assert "rollback" in results[4] and "last healthy" in results[4]  # no checkpoint exists here
    obj.cfg.on_collapse = "warn"


def test_preflight_reports_the_masking_actually_drawn(objective):
    import json

    report = json.loads((Path(objective.cfg.output_dir) / "preflight.json").read_text())["masking"]
    assert report["masked_fraction"] == pytest.approx(objective.preflight["masked_fraction"])
    assert 0.4 < report["masked_fraction"] < 0.6 and 11 < report["mean_span_length"] < 18
    assert report["expected_masked_fraction"] == pytest.approx(report["masked_fraction"], abs=0.05)


def test_collator_rows_give_the_same_loss_without_reading_back():
    """The collator's masked_positions / negative_rows equal what the model derives from the mask, and with
    them the forward and backward run no nonzero (a device sync on a GPU, a graph break for torch.compile)."""
    config = tiny_config(feat_extract_norm="layer", do_stable_layer_norm=True)
    collator = AudioPretrainingCollator(KERNEL, STRIDE, max_samples=3000, return_attention_mask=True, mask_prob=0.65,
                                        mask_length=5, num_negatives=10)
    batch = tensors(make_batch(collator, [3000, 2200, 2700], seed=3))
    torch.manual_seed(0)
    model = Wav2Vec2Pretraining(Wav2Vec2ForPreTraining(config)).eval()
    derived = {k: v for k, v in batch.items() if k not in ("masked_positions", "negative_rows")}
    with torch.no_grad():
        expected = model(**derived)["loss_sum"]
    with torch.profiler.profile() as prof:
        got = model(**batch)["loss_sum"]
        got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert [e.key for e in prof.key_averages() if e.key in ("aten::nonzero", "aten::masked_select")] == []
