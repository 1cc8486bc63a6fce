"""Fine-tuning data pieces: labels, budgets, transcripts, collators, heads, config checks."""

import datasets
import numpy as np
import pytest
import torch

from hfssl.collators.finetune import AudioCollator, TextClassificationCollator
from hfssl.config import load_config
from hfssl.errors import ConfigError, DataError
from hfssl.finetune import data as fdata
from hfssl.finetune.config import FinetuneConfig
from hfssl.finetune.heads import LayerProbe, classification_loss
from hfssl.finetune.ctc import build_vocab, ctc_min_frames, normalize_transcript

from conftest import FIXTURES

TOPICS = FIXTURES / "text" / "classification"


def test_topic_fixture_is_balanced_real_text():
    train = fdata.read_table(str(TOPICS / "train.csv"))
    assert train.column_names == ["text", "label"] and len(train) == 160
    counts = {k: train["label"].count(k) for k in set(train["label"])}
    assert counts == {"files": 40, "network": 40, "concurrency": 40, "numbers": 40}
    assert all(len(t.split()) >= 5 for t in train["text"])


def test_label_space_strings_ints_and_lists():
    ds = datasets.Dataset.from_dict({"label": ["b", "a", "b"]})
    assert fdata.build_label_space(ds, "label", None, ";", "x").names == ["a", "b"]
    ints = datasets.Dataset.from_dict({"label": [10, 2, 2]})
    space = fdata.build_label_space(ints, "label", None, ";", "x")
    assert space.names == ["2", "10"] and space.encode(10) == 1 and space.encode(2.0) == 0
    multi = datasets.Dataset.from_dict({"label": [["x", "y"], ["y"], []]})
    space = fdata.build_label_space(multi, "label", None, ";", "x")
    assert space.multi_label and space.names == ["x", "y"] and space.encode(["y"]) == [0.0, 1.0]
    joined = datasets.Dataset.from_dict({"label": ["x;z", "z", "y"]})
    space = fdata.build_label_space(joined, "label", True, ";", "x")
    assert space.names == ["x", "y", "z"] and space.encode("x;z") == [1.0, 0.0, 1.0]


def test_unseen_validation_label_is_listed():
    space = fdata.LabelSpace(["a", "b"])
    val = datasets.Dataset.from_dict({"label": ["a", "c", "d", "c"]})
    with pytest.raises(DataError, match=r"never seen in training: 'c', 'd'.*Known labels: a, b"):
        fdata.check_labels_known(val, "label", space, ";", "validation", "val.csv")
    # Evaluating a fine-tuned classifier (nothing is trained): the message is about its labels, not training data.
    with pytest.raises(DataError, match=r"label\(s\) that the classifier out/clf does not predict: 'c', 'd'.*Its labels: a, b") as err:
        fdata.check_labels_known(val, "label", space, ";", "validation", "val.csv", "out/clf")
    assert "training" not in str(err.value)


def test_nulls_in_text_column_name_the_rows():
    ds = datasets.Dataset.from_dict({"text": ["ok", None, "  ", "fine"]})
    with pytest.raises(DataError, match=r"column 'text' has 2 null/empty value\(s\) \(data rows 2, 3\)"):
        fdata.check_no_nulls(ds, "text", "train.csv")


def test_unknown_column_lists_available():
    ds = datasets.Dataset.from_dict({"sentence": ["x"], "topic": ["y"]})
    with pytest.raises(DataError, match="available columns: sentence, topic"):
        fdata.require_column(ds, "label", "label_column_name", "train.csv")


def test_stratified_budget_keeps_every_label_and_is_deterministic():
    keys = ["a"] * 40 + ["b"] * 40 + ["c"] * 4
    chosen, rest = fdata.stratified_indices(keys, 0.1, seed=3)
    assert sorted(chosen + rest) == list(range(84))
    picked = [keys[i] for i in chosen]
    assert picked.count("a") == 4 and picked.count("b") == 4 and picked.count("c") == 1
    assert fdata.stratified_indices(keys, 0.1, seed=3) == (chosen, rest)
    assert fdata.stratified_indices(keys, 0.1, seed=4)[0] != chosen


def test_transcript_normalization_vocab_and_ctc_length():
    assert normalize_transcript("  Three, ONE-four! ", True, ",!-") == "three onefour"
    vocab = build_vocab(["ab a", "ba c"], "|")
    assert vocab == {"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3, "b": 4, "c": 5}
    with pytest.raises(DataError, match="word delimiter"):
        build_vocab(["a|b"], "|")
    assert ctc_min_frames([3, 3, 4, 4, 4, 5]) == 6 + 3  # blanks between repeats


def test_text_collator_pads_and_counts_examples():
    c = TextClassificationCollator(pad_token_id=0)
    batch = c([{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [5], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["num_targets"] == 2
    multi = c([{"input_ids": [1], "labels": [1.0, 0.0]}, {"input_ids": [2], "labels": [0.0, 1.0]}])
    assert multi["labels"].dtype == torch.float32 and multi["labels"].shape == (2, 2)


def _audio_collator(**kw):
    return AudioCollator(do_normalize=True, return_attention_mask=True, conv_kernel=[10, 3, 3], conv_stride=[5, 2, 2],
                         hidden_size=16, **kw)


def test_audio_collator_crops_and_masks_only_in_training():
    rng = np.random.default_rng(0)
    rows = [{"input_values": rng.standard_normal(n).astype(np.float32), "labels": i} for i, n in enumerate((3000, 1200))]
    c = _audio_collator(max_samples=1000, mask_time_prob=0.5, mask_time_length=4, mask_feature_prob=0.3, mask_feature_length=2)
    train = c([{**r, "train": True} for r in rows], seed=7)
    assert train["input_values"].shape == (2, 1000)
    assert train["mask_time_indices"].shape == (2, 49) and train["mask_time_indices"].any()
    assert train["mask_feature_indices"].shape == (2, 16)
    again = c([{**r, "train": True} for r in rows], seed=7)
    assert torch.equal(again["input_values"], train["input_values"])  # crops are a function of the seed
    assert torch.equal(again["mask_time_indices"], train["mask_time_indices"])
    evals = c([{**r, "train": False} for r in rows], seed=7)
    assert evals["input_values"].shape == (2, 3000) and "mask_time_indices" not in evals  # whole clips, unmasked
    assert evals["attention_mask"].sum(-1).tolist() == [3000, 1200]
    assert evals["input_values"][1, 1200:].abs().sum() == 0
    assert evals["input_values"][0].mean().abs() < 1e-4  # normalized per utterance
    ctc = _audio_collator(ctc=True)([{"input_values": rows[0]["input_values"], "labels": [3, 4, 5]},
                                     {"input_values": rows[1]["input_values"], "labels": [6]}])
    assert ctc["labels"].tolist() == [[3, 4, 5], [6, -100, -100]]


def test_losses_are_sums_over_examples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    total = classification_loss(logits, labels, False)
    assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item() * 3)
    hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, hot).item()
    assert classification_loss(logits, hot, True).item() == pytest.approx(bce * 3)


def test_probe_weights_softmax_and_frozen_upstream():
    from transformers import BertConfig, BertModel

    upstream = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    probe = LayerProbe(upstream, 4, 16, 3)
    weights = probe.layer_weights()
    assert len(weights) == 4 and sum(weights) == pytest.approx(1.0)
    out = probe(labels=torch.tensor([0, 2]), input_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]),
                attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    out["loss_sum"].backward()
    assert probe.layer_logits.grad is not None and probe.layer_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in probe.upstream.parameters())
    assert not probe.train().upstream.training  # frozen upstream never drops out


@pytest.mark.parametrize("args, message", [
    ([], "No model given"),
    (["--model_name_or_path", "m", "--config_name", "m"], "Can't provide both model_name_or_path and config_name"),
    (["--config_name", "m", "--train_file", "nope.csv"], "train_file: file 'nope.csv' does not exist"),
    (["--config_name", "m", "--train_dir", "x"], "train_dir is for audio tasks"),
    (["--config_name", "m", "--task", "image-classification"], "choose one of: text-classification"),
    (["--config_name", "m", "--do_train", "false", "--validation_file", str(TOPICS / "validation.csv")], "do_train false evaluates an existing model"),
    (["--config_name", "m", "--train_file", str(TOPICS / "train.csv"), "--dataset_name", "x"], "Can't provide both dataset_name and train_file"),
    (["--config_name", "m", "--train_file", str(TOPICS / "train.csv"), "--label_fractions", "0.1,1.5"], "label_fractions"),
    (["--config_name", "m", "--train_file", str(TOPICS / "train.csv"), "--compare_with_scratch", "true"], "compare_with_scratch needs model_name_or_path"),
    (["--config_name", "m", "--scratch_learning_rate", "1e30"], "scratch_learning_rate must be in"),
    (["--config_name", "m", "--scratch_learning_rate", "inf"], "scratch_learning_rate: expected a finite number"),
    # push_to_hub where no single fine-tuned transformers model comes out: refused, not ignored
    (["--model_name_or_path", "m", "--do_train", "false", "--push_to_hub", "true"], "push_to_hub uploads the fine-tuned model, and evaluation only"),
    (["--model_name_or_path", "m", "--compare_with_scratch", "true", "--push_to_hub", "true"], "a payoff report trains many models"),
    (["--model_name_or_path", "m", "--probe", "true", "--push_to_hub", "true"], "a probe's folder is not a transformers model"),
    # pretraining's audio keys that fine-tuning does not read are refused, not ignored
    (["--config_name", "m", "--task", "speech-recognition-ctc", "--max_duration_in_seconds", "20"], "max_duration_in_seconds is pretraining's crop length"),
    (["--config_name", "m", "--task", "audio-classification", "--dataset_train_split", "train.clean"], "fine-tuning names the train, validation and test splits"),
    (["--config_name", "m", "--task", "audio-classification", "--max_length_seconds", "2", "--max_batch_seconds", "1"], r"max_batch_seconds \(1.0\) must hold at least one training crop"),
])
def test_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args, default_objective="finetune", configs={"finetune": FinetuneConfig})


def test_data_is_required_to_run_not_to_load():
    cfg = load_config(["--config_name", "m", "--task", "speech-recognition-ctc"], default_objective="finetune", configs={"finetune": FinetuneConfig})
    with pytest.raises(ConfigError, match="No training data: set train_file or train_dir or dataset_name"):
        cfg.check_data_sources()
    cfg = load_config(["--model_name_or_path", "m", "--do_train", "false"], default_objective="finetune", configs={"finetune": FinetuneConfig})
    with pytest.raises(ConfigError, match="do_train false needs evaluation data"):
        cfg.check_data_sources()


def test_every_finetune_recipe_loads(monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)  # recipes name files relative to the repository root
    recipes = sorted((ROOT / "recipes" / "finetune").glob("*.yaml"))
    tasks, tiny_tasks = set(), set()
    for recipe in recipes:
        cfg = load_config([str(recipe)], default_objective="finetune", configs={"finetune": FinetuneConfig})
        assert cfg.objective == "finetune" and cfg.model_name_or_path
        assert cfg.task in ("text-classification", "audio-classification", "speech-recognition-ctc")
        tasks.add(cfg.task)
        if "tiny-cpu" in recipe.name:
            cfg.check_data_sources()  # the tiny recipes run as they are, on the fixtures
            tiny_tasks.add(cfg.task)
    # every task ships a full-size recipe and a tiny CPU one
    all_tasks = {"text-classification", "audio-classification", "speech-recognition-ctc"}
    assert tasks == all_tasks and tiny_tasks == all_tasks
    assert len(recipes) >= 6


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_tables_in_every_format_read_the_same(tmp_path, ext):
    import pandas as pd

    frame = pd.DataFrame({"text": ["Copy the file.", "Open a socket."], "label": ["files", "network"]})
    path = tmp_path / f"t.{ext}"
    if ext in ("csv", "tsv"):
        frame.to_csv(path, sep="\t" if ext == "tsv" else ",", index=False)
    elif ext == "json":
        frame.to_json(path, orient="records")
    elif ext == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    ds = fdata.read_table(str(path))
    assert ds["text"] == ["Copy the file.", "Open a socket."] and ds["label"] == ["files", "network"]


def test_ctc_wrapper_applies_collator_specaugment_and_sums_over_utterances():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from hfssl.finetune.heads import CTCRecognizer

    torch.manual_seed(0)
    config = Wav2Vec2Config(conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                            vocab_size=6, pad_token_id=0, mask_feature_prob=0.3, hidden_dropout=0.0, activation_dropout=0.0,
                            attention_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0)
    model = Wav2Vec2ForCTC(config)
    wrapper = CTCRecognizer(model, blank_id=0, zero_infinity=True).train()
    seen = {}  # pre-hooks run in order: this one sees the encoder input after the feature mask
    model.wav2vec2.encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(x=(a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True)
    assert model.config.mask_feature_prob == 0.0  # the model must not draw feature masks of its own
    values = torch.randn(2, 2000)
    labels = torch.tensor([[1, 2, 3], [4, -100, -100]])
    time_mask = torch.zeros(2, 99, dtype=torch.bool)
    time_mask[:, 10:20] = True
    feat_mask = torch.zeros(2, 16, dtype=torch.bool)
    feat_mask[:, :4] = True
    out = wrapper(labels=labels, input_values=values, mask_time_indices=time_mask, mask_feature_indices=feat_mask)
    x = seen["x"]  # encoder input (B, T, H), after SpecAugment
    assert (x[:, :, :4] == 0).all() and (x[:, :, 4:] != 0).any()
    assert torch.allclose(x[0, 15, 4:], model.wav2vec2.masked_spec_embed[4:].detach())
    wrapper.eval()
    with torch.no_grad():
        single = [wrapper.predict_step(labels=labels[i : i + 1], input_values=values[i : i + 1])[0] for i in range(2)]
        both, ids = wrapper.predict_step(labels=labels, input_values=values)
    assert both.item() == pytest.approx(sum(s.item() for s in single), rel=1e-5)  # a SUM over utterances
    assert len(ids) == 2 and ids[0].shape == (99,)
    assert out["loss_sum"].item() > 0
    wrapper.restore_config()
    assert model.config.mask_feature_prob == 0.3


def test_validation_carved_from_train_keeps_a_training_example_of_every_class(caplog):
    keys = ["big"] * 40 + ["pair"] * 2 + ["single"] + ["four"] * 4
    train = datasets.Dataset.from_dict({"label": keys, "i": list(range(len(keys)))})
    kept, validation = fdata.hold_out_validation(train, keys, 10, seed=0, source="train.csv")
    kept_labels, validation_labels = list(kept["label"]), list(validation["label"])
    assert sorted(list(kept["i"]) + list(validation["i"])) == list(range(len(keys)))
    assert set(kept_labels) == {"big", "pair", "single", "four"}  # the single example stays in training
    assert validation_labels.count("big") == 4 and validation_labels.count("pair") == 1
    assert validation_labels.count("four") == 1 and "single" not in validation_labels
    assert "3 label(s) have fewer than 5 examples" in caplog.text and "'single' (1)" in caplog.text and "'pair' (2)" in caplog.text


def test_chars_to_ignore_is_a_regex_class_and_keeps_apostrophes():
    from hfssl.finetune.config import FinetuneConfig

    default = FinetuneConfig(config_name="x").chars_to_ignore
    assert normalize_transcript("Don't STOP, e.g. \\ now!", True, default) == "don't stop eg \\ now"
    assert normalize_transcript("well-known a-b", True, default) == "wellknown ab"  # \- is a hyphen, not '\' and '-'
    assert normalize_transcript("x1 y22 z", True, "0-9") == "x y z"  # a range, as a class
    with pytest.raises(ConfigError, match="chars_to_ignore"):
        FinetuneConfig(config_name="x", chars_to_ignore="a]b[")


@pytest.mark.parametrize("zero_infinity", [True, False])
def test_the_ctc_probe_honours_ctc_zero_infinity(zero_infinity):
    from types import SimpleNamespace

    from transformers import Wav2Vec2Config

    from hfssl.data.audio.geometry import ConvFrames
    from hfssl.finetune.heads import ctc_loss_sum
    from hfssl.finetune.speech import SpeechTask

    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
                            conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    cfg = SimpleNamespace(ctc_zero_infinity=zero_infinity, probe_hidden_size=0, attn_implementation=None, mixed_precision="no")
    task = SimpleNamespace(cfg=cfg, config=config, pretrained=False, source="x", frames=ConvFrames(config.conv_kernel, config.conv_stride))
    probe = SpeechTask._upstream_probe(task, 6, "ctc", 0).train()  # as CTCTask builds it with probe true, as the loop runs it
    torch.manual_seed(0)
    audio = torch.randn(2, 400)  # 39 frames each
    labels = torch.tensor([[1, 2, 3] + [-100] * 57, [4] * 60])  # the second transcript cannot fit 39 frames
    loss = probe(labels=labels, input_values=audio)["loss_sum"]
    if zero_infinity:
        assert torch.isfinite(loss) and loss > 0
    else:
        assert loss == float("inf")
    # The probe's loss is the one CTC loss function the CTC head uses.
    logits = torch.randn(2, 39, 6)
    assert ctc_loss_sum(logits, labels, torch.tensor([39, 39]), 0, False) == float("inf")
    assert torch.isfinite(ctc_loss_sum(logits, labels, torch.tensor([39, 39]), 0, True))


def test_audio_classification_validation_carved_from_train_keeps_every_class(tmp_path):
    """A validation split held out of an audio folder is stratified: a class with a single clip keeps it
    in training (a random hold-out could send it to validation and the class would never be trained)."""
    import shutil
    from pathlib import Path

    from transformers import Wav2Vec2Config

    from hfssl.finetune.config import FinetuneConfig
    from hfssl.finetune.speech import AudioClassificationTask

    keywords = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "keywords"
    for label, n in (("yes", 8), ("no", 8), ("stop", 1)):
        (tmp_path / "audio" / label).mkdir(parents=True)
        for clip in sorted((keywords / label).glob("*.flac"))[:n]:
            shutil.copy(clip, tmp_path / "audio" / label / clip.name)
    Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32),
                   conv_kernel=(10, 8), conv_stride=(5, 4), num_conv_pos_embeddings=16).save_pretrained(tmp_path / "model")
    for seed in range(3):  # whatever the draw
        cfg = FinetuneConfig(task="audio-classification", config_name=str(tmp_path / "model"), train_dir=str(tmp_path / "audio"),
                             validation_split_percentage=25, seed=seed, output_dir=str(tmp_path / f"out{seed}"))
        task = AudioClassificationTask(cfg)
        train_labels = [r["label"] for r in task.splits["train"].rows]
        val_labels = [r["label"] for r in task.splits["validation"].rows]
        assert train_labels.count("stop") == 1 and "stop" not in val_labels
        assert val_labels.count("yes") == val_labels.count("no") == 2  # 25% of each class
        assert len(train_labels) + len(val_labels) == 17


@pytest.mark.parametrize("arch", ["wav2vec2", "wav2vec2-bert"])
def test_audio_classifier_trains_without_specaugment(arch):
    """mask_time_prob = mask_feature_prob = 0 (no SpecAugment): transformers then builds the model without a mask
    embedding, and a training step must neither crash nor mask anything."""
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForSequenceClassification, Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from hfssl.finetune.heads import AudioClassifier

    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3,
                 mask_time_prob=0.0, mask_feature_prob=0.0, classifier_proj_size=8, layerdrop=0.0)
    if arch == "wav2vec2":
        model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(
            conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2, **small))
        inputs = {"input_values": torch.randn(2, 800)}
    else:
        model = Wav2Vec2BertForSequenceClassification(Wav2Vec2BertConfig(feature_projection_input_dim=20, conv_depthwise_kernel_size=3, **small))
        inputs = {"input_features": torch.randn(2, 12, 20), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    assert not hasattr(model.base_model, "masked_spec_embed")
    wrapper = AudioClassifier(model)
    for m in wrapper.modules():  # dropout off: a training step must then equal the evaluation forward (nothing masked)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        reference = wrapper.eval()._logits(**inputs)
    out = wrapper.train()(labels=torch.tensor([0, 2]), **inputs)
    expected = torch.nn.functional.cross_entropy(reference, torch.tensor([0, 2]), reduction="sum")
    assert out["loss_sum"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("key", ["config_name", "model_name_or_path"])
def test_unreadable_model_config_names_the_key_given(tmp_path, capsys, key):
    """The error names the setting the user gave (it guessed from the string: a path read as model_name_or_path)."""
    from hfssl.finetune.run import main

    (tmp_path / "no-such-model").mkdir()  # a folder without config.json (a missing path is refused at load)
    code = main(["--task", "text-classification", f"--{key}", str(tmp_path / "no-such-model"), "--train_file",
                 str(TOPICS / "train.csv"), "--output_dir", str(tmp_path / "out")])
    assert code == 2 and f"{key}: could not read a model config from '{tmp_path / 'no-such-model'}'" in capsys.readouterr().err


def test_holding_out_validation_from_rows_with_distinct_labels_is_refused_before_training():
    """Every label once: nothing could be held out, training ran, then the final evaluation crashed in
    np.array_split ('number sections must be larger than 0')."""
    keys = ["a", "b", "c", "d", "e"]
    train = datasets.Dataset.from_dict({"label": keys})
    with pytest.raises(DataError, match=r"uniq.csv: no validation examples could be held out: each of its 5 training "
                                        r"examples has a label of its own.*Give validation_file"):
        fdata.hold_out_validation(train, keys, 10, seed=0, source="uniq.csv")
