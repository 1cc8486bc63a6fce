"""data2vec: targets against a hand computation, the EMA update and tau schedule, the teacher kept out of
gradients, the optimizer and the saved weights, its state round trip, the collapse guard, config checks."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import Data2VecAudioConfig, Data2VecAudioModel, Data2VecTextConfig, Data2VecTextModel

from hfssl.errors import ConfigError, RollbackRequested
from hfssl.objectives import load_config
from hfssl.objectives.data2vec.model import Data2VecAudioPretraining, Data2VecTextPretraining, regression_head
from hfssl.objectives.data2vec.objective import Data2VecObjective
from hfssl.objectives.data2vec.targets import (average_targets, ema_decay, instance_norm, mean_prediction_loss,
                                               regression_loss, spread)
from hfssl.objectives.data2vec.teacher import audio_teacher, text_teacher
from hfssl.schedules import build_optimizer

MASK_ID = 4


def text_student(layers=3) -> Data2VecTextModel:
    torch.manual_seed(0)
    config = Data2VecTextConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=40, pad_token_id=1)
    return Data2VecTextModel(config, add_pooling_layer=False)


def audio_student(layers=3) -> Data2VecAudioModel:
    torch.manual_seed(0)
    config = Data2VecAudioConfig(conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=16,
                                 num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                                 num_conv_pos_embeddings=2, conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2,
                                 mask_time_prob=0.65, layerdrop=0.0)
    return Data2VecAudioModel(config)


# ----------------------------------------------------------------------------------- targets and loss

def test_targets_equal_a_hand_computation_from_toy_teacher_layers():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 4, generator=g) * (k + 1) + k for k in range(3)]  # K=3 blocks, (B=2, T=5, H=4)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)  # the second example is padded
    inst = torch.zeros(2, 5, 4)
    lay = torch.zeros(2, 5, 4)
    for y in layers:
        for b in range(2):
            n = int(real[b].sum())
            for h in range(4):  # instance norm: per example and channel, over the real positions
                col = y[b, :n, h]
                mean, var = col.sum() / n, ((col - col.sum() / n) ** 2).sum() / n
                inst[b, :n, h] += (col - mean) / (var + 1e-5).sqrt() / 3
            for t in range(5):  # layer norm: per position, over the channels
                row = y[b, t]
                lay[b, t] += (row - row.mean()) / (row.var(unbiased=False) + 1e-5).sqrt() / 3
    torch.testing.assert_close(average_targets(layers, "instance", real), inst, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(average_targets(layers, "layer", real), lay, rtol=1e-5, atol=1e-6)
    assert (average_targets(layers, "instance", real)[1, 3:] == 0).all()  # padding carries no target
    # With no padding the masked instance norm is F.instance_norm over time (what fairseq applies).
    full = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(instance_norm(layers[1], full), F.instance_norm(layers[1].transpose(1, 2)).transpose(1, 2),
                               rtol=1e-5, atol=1e-6)


def test_regression_loss_is_scaled_sum_of_squared_error_or_smooth_l1():
    pred = torch.tensor([[0.0, 1.0], [2.0, -3.0]])
    target = torch.tensor([[0.5, 1.0], [-4.0, 0.0]])
    d = (pred - target).abs()  # 0.5, 0, 6, 3
    assert regression_loss(pred, target, beta=0.0, scale=0.5).item() == pytest.approx(0.5 * (d ** 2).sum().item())
    beta = 4.0  # quadratic below beta, linear above: 0.5 d^2 / beta or d - beta / 2
    expected = sum(0.5 * x * x / beta if x < beta else x - beta / 2 for x in d.flatten().tolist())
    assert regression_loss(pred, target, beta=beta, scale=1.0).item() == pytest.approx(expected)
    # The loss to beat: predicting the mean target (-1.75, 0.5) everywhere; for squared error scale * N * summed variance.
    assert mean_prediction_loss(target, beta=0.0, scale=0.5).item() == pytest.approx(0.5 * 2 * (target.var(0, unbiased=False).sum().item()))
    assert mean_prediction_loss(target, beta=4.0, scale=1.0).item() == pytest.approx(sum(0.5 * x * x / 4 for x in (2.25, 0.5, 2.25, 0.5)))
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])  # std per dim: sqrt(2), 0
    assert spread(x).item() == pytest.approx(((2 + 1e-6) ** 0.5 + 1e-3) / 2, rel=1e-5)
    assert spread(x[:1]).item() == 0.0


def test_regression_head_layout():
    assert [type(m).__name__ for m in regression_head(8, 1)] == ["Linear"]
    head = regression_head(8, 2)  # fairseq text base: linear to 2H, GELU, linear back
    assert [tuple(m.weight.shape) for m in head if isinstance(m, torch.nn.Linear)] == [(16, 8), (8, 16)]


# ----------------------------------------------------------------------------------- EMA

def test_tau_schedule_is_linear_then_constant():
    start, end, n = 0.999, 0.9999, 30000
    assert ema_decay(1, start, end, n) == pytest.approx(start + (end - start) / n, abs=1e-15)
    assert ema_decay(15000, start, end, n) == pytest.approx((start + end) / 2, abs=1e-15)
    assert ema_decay(30000, start, end, n) == end and ema_decay(10 ** 6, start, end, n) == end
    taus = [ema_decay(s, start, end, n) for s in range(1, n + 1, 997)]
    assert all(a < b for a, b in zip(taus, taus[1:]))
    assert ema_decay(1, start, end, 0) == end  # no annealing: tau_e from the start


def test_ema_update_matches_the_formula_and_copies_the_skipped_parameters():
    student = text_student()
    teacher = text_teacher(student, 2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in teacher.module.named_parameters()}
    snapshot = {n: p.clone() for n, p in student.named_parameters()}
    tau = 0.9
    teacher.update(student, tau)
    params = dict(student.named_parameters())
    assert teacher.copied and all(n.startswith("embeddings.") for n in teacher.copied)
    assert any(n.startswith("encoder.layer.") for n in teacher.averaged)
    for n, p in teacher.module.named_parameters():
        if n in teacher.copied:
            assert torch.equal(p, params[n]), n
        else:
            torch.testing.assert_close(p, tau * before[n] + (1 - tau) * params[n], rtol=1e-6, atol=1e-7)
            assert not torch.equal(p, before[n]) and not torch.equal(p, params[n])
    assert all(torch.equal(p, snapshot[n]) for n, p in student.named_parameters())  # the student is untouched


def test_text_teacher_targets_are_the_feed_forward_outputs_of_the_top_blocks():
    student = text_student(layers=3)
    teacher = text_teacher(student, 2)
    ids = torch.randint(5, 50, (2, 7))
    got = teacher.top_outputs(input_ids=ids)
    m = teacher.module
    hidden = m(input_ids=ids, output_hidden_states=True).hidden_states  # embeddings + 3 blocks
    for k, i in enumerate((1, 2)):  # by hand: block i's attention, then its feed-forward before the residual
        block = m.encoder.layer[i]
        attended = block.attention(hidden[i])[0]
        ffn = block.output.dense(block.intermediate(attended))
        torch.testing.assert_close(got[k], ffn)
        torch.testing.assert_close(block.output.LayerNorm(ffn + attended), hidden[i + 1])  # it is that block's output


def test_modernbert_teacher_targets_are_the_mlp_outputs_of_the_top_blocks():
    """Pre-LN blocks: out = h + mlp(mlp_norm(h)), h = x + attn(attn_norm(x)). Given each top block's output and
    the target t the teacher read, h = out - t must give back t = mlp(mlp_norm(h)); the block's input, its
    attention output or its whole output would not."""
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=40, local_attention=40, pad_token_id=1,
                              bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    teacher = text_teacher(ModernBertModel(config), 2)
    ids = torch.randint(5, 50, (2, 7))
    got = teacher.top_outputs(input_ids=ids, attention_mask=torch.ones_like(ids))
    m = teacher.module
    hidden = m(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    assert len(got) == 2 and all(t.shape == (2, 7, 16) for t in got)
    for k, i in enumerate((1, 2)):  # block i's output is hidden[i + 1] (before the encoder's final norm)
        block = m.layers[i]
        after_attention = hidden[i + 1] - got[k]
        torch.testing.assert_close(block.mlp(block.mlp_norm(after_attention)), got[k])
        assert not torch.allclose(got[k], hidden[i + 1])
    assert teacher.copied and all(n.startswith("embeddings.") for n in teacher.copied)


def test_block_source_targets_are_the_top_blocks_outputs_for_every_layout():
    """target_source 'block': the text (post-LN BERT layout), ModernBERT (pre-LN: the residual stream before the
    encoder's final norm) and audio teachers hand back the top blocks' own outputs, not their feed-forward outputs."""
    from transformers import ModernBertConfig, ModernBertModel

    ids = torch.randint(5, 50, (2, 7))
    bert = text_teacher(text_student(layers=3), 2, source="block")
    hidden = bert.module(input_ids=ids, output_hidden_states=True).hidden_states
    got = bert.top_outputs(input_ids=ids)
    assert len(got) == 2
    for k, i in enumerate((2, 3)):
        torch.testing.assert_close(got[k], hidden[i])

    torch.manual_seed(0)
    config = ModernBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=40, local_attention=40, pad_token_id=1,
                              bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    modern = text_teacher(ModernBertModel(config), 2, source="block")
    mask = torch.ones_like(ids)
    hidden = modern.module(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = modern.top_outputs(input_ids=ids, attention_mask=mask)
    ffn = text_teacher(modern.module, 2).top_outputs(input_ids=ids, attention_mask=mask)  # same weights, the paper's source
    assert len(got) == 2 and all(t.shape == (2, 7, 16) for t in got)
    torch.testing.assert_close(got[0], hidden[2])  # block 1's output: the residual stream, not normalized
    torch.testing.assert_close(modern.module.final_norm(got[1]), hidden[3])  # hidden[-1] is after the final norm
    assert not torch.allclose(got[1], hidden[3], atol=1e-3)
    for k in range(2):
        assert not torch.allclose(got[k], ffn[k], atol=1e-3)

    student = audio_student(layers=3)
    audio = audio_teacher(student, 2, source="block")
    x = torch.randn(2, 9, 16)
    got = audio.top_outputs(hidden_states=x.clone())
    enc = audio.module
    with torch.no_grad():  # the post-LN encoder by hand: each block's output
        h = enc.layer_norm(x + enc.pos_conv_embed(x))
        outs = []
        for block in enc.layers:
            a = block.layer_norm(h + block.attention(h)[0])
            h = block.final_layer_norm(a + block.feed_forward(a))
            outs.append(h)
    assert len(got) == 2
    torch.testing.assert_close(got[0], outs[1])
    torch.testing.assert_close(got[1], outs[2])


def test_target_source_is_parsed_and_checked():
    # (that it reaches the teacher and the model card: tests/integration/test_pretrain_data2vec.py)
    assert load_config(["--objective", "data2vec_text"]).target_source == "feed_forward"  # the paper's
    assert load_config(["--objective", "data2vec_text", "--target_source", "block"]).target_source == "block"
    with pytest.raises((ConfigError, SystemExit), match="target_source|residual"):
        load_config(["--objective", "data2vec_text", "--target_source", "residual"])


def test_audio_teacher_targets_are_the_feed_forward_outputs_of_the_top_blocks():
    student = audio_student(layers=3)
    teacher = audio_teacher(student, 2)
    x = torch.randn(2, 9, 16)
    got = teacher.top_outputs(hidden_states=x.clone())
    enc = teacher.module
    with torch.no_grad():  # the post-LN encoder by hand
        h = enc.layer_norm(x + enc.pos_conv_embed(x))
        ffns = []
        for block in enc.layers:
            a = block.layer_norm(h + block.attention(h)[0])
            ffns.append(block.feed_forward(a))
            h = block.final_layer_norm(a + ffns[-1])
    assert len(got) == 2
    for k in range(2):
        torch.testing.assert_close(got[k], ffns[1 + k])
    torch.testing.assert_close(enc(x.clone()).last_hidden_state, h)


def test_teacher_gets_no_gradient_and_is_neither_optimized_nor_saved():
    loss = dict(head_layers=2, target_norm="layer", loss_beta=4.0, loss_scale=1.0)
    student = text_student()
    text = Data2VecTextPretraining(student, text_teacher(student, 2), MASK_ID, **loss)
    labels = torch.full((2, 8), -100)
    labels[:, 2:5] = 7
    ids = torch.randint(5, 50, (2, 8))
    ids[:, 2:5] = MASK_ID
    out = text(input_ids=ids, attention_mask=torch.ones(2, 8, dtype=torch.long), labels=labels)
    out["loss_sum"].backward()

    speech_student = audio_student()
    speech = Data2VecAudioPretraining(speech_student, audio_teacher(speech_student, 2), feature_grad_scale=0.1,
                                      head_layers=1, target_norm="instance", loss_beta=0.0, loss_scale=None)
    mask = torch.zeros(2, 19, dtype=torch.bool)
    mask[:, 3:13] = True
    speech(input_values=torch.randn(2, 400), mask_time_indices=mask, frame_lengths=torch.tensor([19, 15]))["loss_sum"].backward()

    for model in (text, speech):
        teacher = model.teacher.module
        trained = {id(p) for p in model.parameters()}
        adamw = SimpleNamespace(weight_decay=0.01, learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6)
        optimized = {id(p) for group in build_optimizer(adamw, model).param_groups for p in group["params"]}
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
        assert not trained & {id(p) for p in teacher.parameters()} and not optimized & {id(p) for p in teacher.parameters()}
        assert all(p.grad is not None for p in model.parameters())  # every trained parameter gets a gradient (DDP needs it)
        assert not any("teacher" in k for k in model.state_dict())  # the saved weights are the student's and the head's
        assert not teacher.training


def test_teacher_state_round_trips_bit_exactly_through_torch_save():
    student = text_student()
    teacher = text_teacher(student, 2)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.7)
    teacher.update(student, 0.999)  # values that are not the student's
    buffer = io.BytesIO()
    torch.save(teacher.state_dict("teacher."), buffer)
    buffer.seek(0)
    other = text_teacher(text_student(), 2)
    other.load_state_dict(torch.load(buffer), "teacher.")
    assert all(torch.equal(a, b) for a, b in zip(teacher.module.parameters(), other.module.parameters()))
    with pytest.raises(Exception, match="has no 'encoder.layer.2"):
        text_teacher(text_student(layers=3), 2).load_state_dict(text_teacher(text_student(layers=2), 2).state_dict("t."), "t.")


# ----------------------------------------------------------------------------------- collapse guard

def _guard(on_collapse, tmp_path, patience=2):
    cfg = SimpleNamespace(ema_decay=0.999, on_collapse=on_collapse, min_target_var=0.1, min_pred_var=0.01,
                          collapse_check_after=3, collapse_patience=patience, output_dir=str(tmp_path))
    obj = Data2VecObjective(cfg)
    obj._start_state()
    return obj


def _row(step, target_var, pred_var=0.5):
    return {"step": step, "num_targets": 10, "target_var": target_var, "pred_var": pred_var}


def test_collapse_guard_warns_stops_or_rolls_back(tmp_path, caplog):
    collapsed = [_row(s, 0.01) for s in (1, 2, 3)]  # before collapse_check_after: not checked
    warn = _guard("warn", tmp_path)
    with caplog.at_level(logging.WARNING):
        assert [warn.check_health([r]) for r in collapsed + [_row(4, 0.01), _row(5, 0.01), _row(6, 0.01)]] == [None] * 6
    assert sum("data2vec collapse at step 5" in m for m in caplog.messages) == 1  # once, after 2 updates in a row

    stop = _guard("stop", tmp_path)
    assert stop.check_health([_row(4, 0.5, pred_var=0.001)]) is None  # one update below the threshold: patience 2
    assert stop.check_health([_row(5, 0.5)]) is None  # healthy again: the streak restarts
    assert stop.check_health([_row(6, 0.05)]) is None
    assert "Stopped (on_collapse=stop)" in stop.check_health([_row(7, 0.05)])
    assert stop.check_health([{**_row(8, float("nan")), "pred_var": float("nan")}]) is None  # skipped update: no verdict

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "hfssl_checkpoint.json").write_text("{}")
    back = _guard("rollback", tmp_path)
    assert back.check_health([_row(5, 0.5)]) is None
    back.check_health([_row(6, 0.01)])
    with pytest.raises(RollbackRequested) as raised:
        back.check_health([_row(7, 0.01)])
    assert raised.value.checkpoint == str(tmp_path / "checkpoint-4")


# ----------------------------------------------------------------------------------- settings

def test_config_defaults_per_modality_and_checks(tmp_path):
    text = load_config(["--objective", "data2vec_text"])
    assert (text.average_top_k_layers, text.target_layer_norm, text.loss_beta, text.loss_scale, text.head_layers) == (10, "layer", 4.0, 1.0, 2)
    assert (text.ema_decay, text.ema_end_decay, text.ema_anneal_end_step, text.model_type) == (0.999, 0.9999, 300000, "data2vec-text")
    speech = load_config(["--objective", "data2vec_audio", "--train_dir", str(tmp_path)])
    assert (speech.average_top_k_layers, speech.target_layer_norm, speech.loss_beta, speech.loss_scale, speech.head_layers) == (8, "instance", 0.0, None, 1)
    assert (speech.ema_anneal_end_step, speech.feature_grad_scale) == (30000, 1.0)
    with pytest.raises(ConfigError, match="ema_decay <= ema_end_decay"):
        load_config(["--objective", "data2vec_text", "--ema_decay", "0.9999", "--ema_end_decay", "0.999"])
    with pytest.raises(ConfigError, match="mask_replace_prob must be > 0"):
        load_config(["--objective", "data2vec_text", "--mask_replace_prob", "0", "--random_replace_prob", "0.5"])
    with pytest.raises(ConfigError, match="Unknown key 'mlm_probability'.*data2vec_audio"):  # text masking is not a speech key
        load_config(["--objective", "data2vec_audio", "--train_dir", str(tmp_path), "--mlm_probability", "0.3"])
    obj = Data2VecObjective(SimpleNamespace(average_top_k_layers=13))
    with pytest.raises(ConfigError, match="average_top_k_layers \\(13\\) is more than the model's 12 layers"):
        obj._check_top_k(12)
