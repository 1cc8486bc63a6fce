"""Constant-graph LayerDrop (hfssl.layerdrop): the same layers drop as transformers' own LayerDrop
would drop, a dropped layer passes its input through with zero gradients, every parameter is in the
graph, the config keeps the user's value, and gradient checkpointing does not change the draws."""

import copy

import pytest
import torch

from hfssl.layerdrop import constant_graph_layerdrop

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  apply_spec_augment=False)  # transformers draws SpecAugment masks from numpy: not reseeded here
TINY = dict(hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32, conv_dim=[8, 8],
            conv_kernel=[10, 4], conv_stride=[5, 4], num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)


def _wav2vec2(layerdrop=0.5, **overrides):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(**{**TINY, **NO_DROPOUT, "layerdrop": layerdrop, **overrides})).train()


def _audio(batch=2, samples=1600):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(1))


def _layer_grads(model) -> list[float]:
    return [sum(float(p.grad.abs().sum()) for p in layer.parameters()) for layer in model.encoder.layers]


@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_same_layers_drop_as_transformers_and_outputs_are_equal(stable_layer_norm):
    skipping = _wav2vec2(do_stable_layer_norm=stable_layer_norm, feat_extract_norm="layer" if stable_layer_norm else "group")
    constant = copy.deepcopy(skipping)
    assert constant_graph_layerdrop(constant) == ["encoder"]
    x = _audio()
    dropped_counts = set()
    for seed in range(8):  # p = 0.5 over 6 layers: the seeds drop different sets of layers
        torch.manual_seed(seed)
        expected = skipping(x).last_hidden_state
        torch.manual_seed(seed)
        out = constant(x).last_hidden_state
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        torch.manual_seed(seed)
        dropped_counts.add(int((torch.rand(6) < 0.5).sum()))
    assert len(dropped_counts) > 1


def test_a_dropped_layer_gets_zero_gradient_and_every_parameter_is_in_the_graph():
    model = _wav2vec2()
    constant_graph_layerdrop(model)
    torch.manual_seed(1)
    draws = torch.rand(6) < 0.5  # the draws the forward below makes (no dropout: nothing else draws)
    assert 0 < int(draws.sum()) < 6
    torch.manual_seed(1)
    model(_audio()).last_hidden_state.square().sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # DDP finds no unused parameter
    grads = _layer_grads(model)
    for dropped, grad in zip(draws.tolist(), grads):
        assert (grad == 0) == dropped, (draws, grads)


def test_config_keeps_the_users_layerdrop_even_when_the_forward_fails(tmp_path):
    from transformers import Wav2Vec2Model

    model = _wav2vec2(layerdrop=0.1)
    constant_graph_layerdrop(model)
    model(_audio())
    assert model.config.layerdrop == 0.1
    with pytest.raises(RuntimeError):
        model(torch.zeros(2, 3))  # shorter than the conv receptive field
    assert model.config.layerdrop == 0.1
    model.save_pretrained(tmp_path)
    assert Wav2Vec2Model.from_pretrained(tmp_path).config.layerdrop == 0.1


def test_eval_mode_drops_nothing_and_installing_twice_changes_nothing():
    model = _wav2vec2(layerdrop=0.9)
    reference = copy.deepcopy(model).eval()
    constant_graph_layerdrop(model)
    assert constant_graph_layerdrop(model) == []
    model.eval()
    x = _audio()
    torch.testing.assert_close(model(x).last_hidden_state, reference(x).last_hidden_state)
    model.train()
    torch.manual_seed(0)
    model(x).last_hidden_state.sum().backward()  # one hook per layer: 6 draws, not 12
    torch.manual_seed(0)
    torch.rand(6)
    expected_next = torch.rand([])
    torch.manual_seed(0)
    with torch.no_grad():
        model(x)
    assert torch.rand([]) == expected_next


def test_gradient_checkpointing_recomputes_with_the_same_draws_and_dropout():
    """With dropout on, checkpointing replays each layer's forward in backward; the drop decision is
    made outside the replayed part, so gradients equal those without checkpointing."""
    plain = _wav2vec2(layerdrop=0.4, hidden_dropout=0.1, attention_dropout=0.1)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    for model in (plain, checkpointed):
        constant_graph_layerdrop(model)
        torch.manual_seed(5)
        model(_audio()).last_hidden_state.square().sum().backward()
    assert 0 in _layer_grads(plain) and any(_layer_grads(plain))
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["hubert", "data2vec-audio", "wavlm"])
def test_other_speech_encoders_are_covered(kind):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(kind, **TINY, **NO_DROPOUT, layerdrop=0.5)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).train()
    assert constant_graph_layerdrop(model) == ["encoder"]
    torch.manual_seed(2)
    model(_audio()).last_hidden_state.sum().backward()
    grads = _layer_grads(model)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert 0 in grads and any(grads)
    if kind == "wavlm":
        assert grads[0] != 0  # like transformers, WavLM never drops its first layer (the position bias)


def test_the_conformer_of_best_rq_is_covered():
    """Wav2Vec2Bert (BEST-RQ's conformer, log-mel input) drops layers the same way: every parameter stays in the graph."""
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    config = Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32,
                                feature_projection_input_dim=20, output_hidden_size=16, conv_depthwise_kernel_size=3,
                                layerdrop=0.5, **NO_DROPOUT)
    torch.manual_seed(0)
    model = Wav2Vec2BertModel(config).train()
    assert constant_graph_layerdrop(model) == ["encoder"]
    torch.manual_seed(2)
    model(torch.randn(2, 12, 20, generator=torch.Generator().manual_seed(1))).last_hidden_state.sum().backward()
    grads = _layer_grads(model)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert 0 in grads and any(grads)


def test_models_without_layerdrop_are_left_alone():
    from transformers import BertConfig, BertModel

    assert constant_graph_layerdrop(_wav2vec2(layerdrop=0.0)) == []
    assert constant_graph_layerdrop(BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=16))) == []
