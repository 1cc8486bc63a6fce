"""Pieces of hfssl.distributed and the evaluation plan that need no second process."""

import pytest
import torch

from hfssl.data.batching import eval_batches
from hfssl.distributed import transformer_block_classes


class _Plan:
    """An objective with 5 evaluation batches of 2 examples."""

    eval_dataset = [{"v": i} for i in range(10)]

    def eval_plan(self):
        return [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]

    def collator(self, rows, seed, progress):
        return {"v": torch.tensor([r["v"] for r in rows]), "num_targets": len(rows), "num_inputs": len(rows)}


class _Cfg:
    seed, max_eval_batches = 0, 0


def test_every_process_gets_the_same_number_of_eval_batches_padding_marked():
    shares = [list(eval_batches(_Plan(), _Cfg(), 3, rank)) for rank in range(3)]
    assert [len(s) for s in shares] == [2, 2, 2]
    real = [b["v"].tolist() for s in shares for b in s if not b["pad"]]
    assert sorted(x for v in real for x in v) == list(range(10))  # each example once, padding apart
    padded = [b for s in shares for b in s if b["pad"]]
    assert len(padded) == 1 and padded[0]["v"].tolist() == [0, 1] and shares[2][1]["pad"]


def test_transformer_blocks_are_found_inside_hfssl_wrappers():
    from transformers import BertConfig, BertForMaskedLM, Wav2Vec2Config, Wav2Vec2ForPreTraining

    from hfssl.objectives.mlm.loss import SparseMaskedLM
    from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining

    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16))
    assert transformer_block_classes(SparseMaskedLM(bert)) == ["BertLayer"]
    w2v2 = Wav2Vec2ForPreTraining(Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                                                 conv_dim=[8, 8], conv_kernel=[10, 4], conv_stride=[5, 4], num_conv_pos_embeddings=4,
                                                 num_conv_pos_embedding_groups=2, codevector_dim=16, proj_codevector_dim=16))
    assert "Wav2Vec2EncoderLayer" in transformer_block_classes(Wav2Vec2Pretraining(w2v2))


def test_a_scan_divided_between_processes_equals_one_scan(monkeypatch, tmp_path):
    """Each process decodes every W-th file; gathered back in input order, the outcome is the one-process
    scan's (good files with lengths, bad files with reasons, long files), and a bad file is an error on
    every process alike. Process 1's share is computed inside the stand-in for the gather."""
    import accelerate.utils
    import pytest

    from hfssl.data.audio.decode import AudioScanError, scan_audio, scan_audio_split
    from hfssl.data.audio.files import find_audio_files

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    from conftest import FIXTURES

    paths = [str(p) for p in find_audio_files(FIXTURES / "speech" / "unlabeled")[:6]] + [str(broken)]
    options = dict(max_duration_in_seconds=2.0, num_workers=0)

    class TwoProcesses:
        num_processes, process_index = 2, 0

    def gather_object(mine):
        other = scan_audio(paths[1::2], 16000, 400, on_bad_audio="skip", **options)
        return [mine[0], (other.good, other.bad, other.num_long)]

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    one = scan_audio(paths, 16000, 400, on_bad_audio="skip", **options)
    split = scan_audio_split(paths, 16000, 400, TwoProcesses(), on_bad_audio="skip", **options)
    assert (split.good, split.bad, split.num_long) == (one.good, one.bad, one.num_long)
    assert [p for p, _ in split.bad] == [str(broken)] and len(split.good) == 6 and split.num_long > 0
    with pytest.raises(AudioScanError, match="1 of 7 audio files failed"):
        scan_audio_split(paths, 16000, 400, TwoProcesses(), on_bad_audio="error", **options)


def test_deepspeed_and_fsdp1_are_refused_at_start():
    import pytest
    from accelerate.utils import DistributedType

    from hfssl.distributed import check_backend
    from hfssl.errors import TrainingStopped

    class Launched:
        def __init__(self, kind, fsdp2=False):
            self.distributed_type, self.is_fsdp2 = kind, fsdp2

    with pytest.raises(TrainingStopped, match="DeepSpeed is not supported by hfssl"):
        check_backend(Launched(DistributedType.DEEPSPEED))
    with pytest.raises(TrainingStopped, match="FSDP version 1 is not supported"):
        check_backend(Launched(DistributedType.FSDP))
    check_backend(Launched(DistributedType.FSDP, fsdp2=True))
    check_backend(Launched(DistributedType.MULTI_GPU))


def test_evaluation_leaves_the_compiled_ddp_model_as_it_was(tmp_path):
    """unwrap_model's default puts the bare module into a compiled wrapper in place: the training model then had no
    DDP inside, so accelerator.no_sync found nothing and every accumulated micro-batch all-reduced its gradients."""
    import torch.distributed as dist
    from accelerate import Accelerator

    from hfssl.evaluate import evaluate
    from test_schedules import _WithEvalSet
    from test_trainer_guards import _cfg

    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        objective = _WithEvalSet()
        ddp = torch.nn.parallel.DistributedDataParallel(objective.model)
        compiled = torch.compile(ddp)  # the training model of a compiled DDP run (compiled when first called)
        result = evaluate(Accelerator(), compiled, objective, _cfg(tmp_path))
        assert result["eval_targets"] == 8  # the 8 eval points, run on the bare module
        assert compiled._orig_mod is ddp and hasattr(compiled, "no_sync")  # the training model is untouched
    finally:
        dist.destroy_process_group()
