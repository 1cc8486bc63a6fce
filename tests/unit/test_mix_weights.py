"""benchmarks/payoff/mix_weights.py: the kept modules carry the pretrained weights exactly, every other tensor is
the fresh initialization of the given seed, and a prefix that matches nothing is refused."""

import sys

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks" / "payoff"))
from mix_weights import mix  # noqa: E402

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
            conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
            codevector_dim=8, proj_codevector_dim=8, num_codevectors_per_group=4)


@pytest.fixture
def pretrained(tmp_path):
    torch.manual_seed(123)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**TINY, architectures=["Wav2Vec2ForPreTraining"]))
    with torch.no_grad():  # make the "pretrained" weights unmistakable
        for p in model.parameters():
            p.add_(1.0)
    model.save_pretrained(tmp_path / "pre")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "pre")
    return tmp_path / "pre", model.state_dict()


def test_kept_prefix_is_pretrained_and_the_rest_is_the_seeds_fresh_init(pretrained, tmp_path):
    src, trained = pretrained
    matched = mix(src, tmp_path / "mixed", ["wav2vec2.feature_extractor."], seed=7)
    conv = [k for k in trained if k.startswith("wav2vec2.feature_extractor.")]
    assert matched == {"wav2vec2.feature_extractor.": len(conv)} and len(conv) >= 2
    mixed = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "mixed").state_dict()
    torch.manual_seed(7)
    fresh = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_pretrained(src)).state_dict()
    for name, tensor in mixed.items():
        expected = trained[name] if name in conv else fresh[name]
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=name)
    assert not torch.equal(mixed["wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"],
                           trained["wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"])
    assert Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "mixed").sampling_rate == 16000


def test_a_prefix_that_matches_nothing_is_an_error(pretrained, tmp_path):
    with pytest.raises(SystemExit, match="feature_encoder"):
        mix(pretrained[0], tmp_path / "mixed", ["wav2vec2.feature_encoder."])
