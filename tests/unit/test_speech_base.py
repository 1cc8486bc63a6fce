"""Shared speech-objective pieces."""

import torch
from safetensors.torch import save_file

from hfssl.objectives.speech_base import matching_head


def test_a_saved_head_is_reused_only_for_the_same_targets(tmp_path):
    head = {"final_proj.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(head, str(tmp_path / "head.safetensors"), metadata={"kmeans_sha1": "abc"})
    state = matching_head(str(tmp_path), "head.safetensors", "kmeans_sha1", "abc")
    torch.testing.assert_close(state["final_proj.weight"], head["final_proj.weight"])
    assert matching_head(str(tmp_path), "head.safetensors", "kmeans_sha1", "other") is None  # other clusters
    assert matching_head(str(tmp_path), "missing.safetensors", "kmeans_sha1", "abc") is None
    assert matching_head(None, "head.safetensors", "kmeans_sha1", "abc") is None  # from scratch
