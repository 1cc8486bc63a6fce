"""Speech chain: tiny wav2vec 2.0 pretraining (the real CLI, shared session fixture) -> CTC speech
recognition and audio classification / a frozen-upstream probe -> metrics files and transformers pipelines."""

import csv
import json
import math
import shutil
import sys

import pytest
import soundfile as sf
import torch

from conftest import FIXTURES, ROOT, read_log, run_cli

SPEECH = FIXTURES / "speech"
KEYWORDS = {"yes", "no", "up", "down", "stop"}


@pytest.fixture(scope="module")
def w2v2(tiny_w2v2):
    """The output of the tiny wav2vec 2.0 pretraining run (recipes/wav2vec2/tiny-cpu.yaml on the fixtures)."""
    return tiny_w2v2


def _wave(path):
    wave, sr = sf.read(str(path), dtype="float32")
    return {"raw": wave, "sampling_rate": sr}


def test_ctc_from_pretrained_output_end_to_end(w2v2, tmp_path):
    out = tmp_path / "ctc"
    run_cli("run_finetune.py", [ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml", "--model_name_or_path", w2v2,
                                "--output_dir", out, "--max_steps", "2", "--eval_steps", "0", "--mask_feature_prob", "0.2",
                                "--mask_feature_length", "8"])
    ev = json.loads((out / "eval_results.json").read_text())
    assert set(ev) >= {"eval_loss", "eval_wer", "eval_cer", "eval_samples"}
    assert ev["eval_samples"] == 9 and ev["eval_wer"] > 0 and ev["eval_cer"] > 0 and ev["eval_loss"] > 0
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["[PAD]"] == 0 and "|" in vocab and set(vocab) - {"[PAD]", "[UNK]", "|"} <= set("abcdefghijklmnopqrstuvwxyz")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["mask_time_prob"] == 0.05  # not the pretraining's 0.65
    assert json.loads((w2v2 / "config.json").read_text())["mask_time_prob"] == 0.65
    assert config["architectures"] == ["Wav2Vec2ForCTC"]
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(set(r["reference"].split()) <= {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} for r in rows)

    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(out))
    text = asr(_wave(SPEECH / "digits" / "kal_008.flac"))["text"]
    assert isinstance(text, str) and set(text) <= set(vocab) | {" "}

    # Evaluation only, on the whole folder, one file per batch: the same transcripts as the pipeline.
    from hfssl.finetune.run import main

    again = tmp_path / "eval-only"
    assert main([str(ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml"), "--model_name_or_path", str(out),
                 "--do_train", "false", "--train_dir", "none", "--validation_dir", str(SPEECH / "digits"),
                 "--per_device_eval_batch_size", "1", "--output_dir", str(again)]) == 0
    assert json.loads((again / "eval_results.json").read_text())["eval_samples"] == 60
    new = {r["file"]: r["prediction"] for r in map(json.loads, (again / "eval_predictions.jsonl").read_text().splitlines())}
    for name in ("kal_008.flac", "en-gb_f2_001.flac"):
        assert new[str(SPEECH / "digits" / name)] == asr(_wave(SPEECH / "digits" / name))["text"]


def test_audio_classification_and_probe(w2v2, tmp_path, capsys):
    from transformers import pipeline

    from hfssl.finetune.run import main

    recipe = str(ROOT / "recipes" / "finetune" / "audio-classification-tiny-cpu.yaml")
    common = ["--model_name_or_path", str(w2v2), "--train_dir", str(SPEECH / "keywords"), "--max_steps", "2",
              "--per_device_eval_batch_size", "32"]
    out = tmp_path / "kws"
    assert main([recipe, *common, "--test_dir", str(SPEECH / "keywords"), "--output_dir", str(out)]) == 0, capsys.readouterr().err[-2000:]
    ev = json.loads((out / "eval_results.json").read_text())
    # Stratified: 20% of each keyword's 12 clips, rounded, is held out (2 per class).
    assert set(ev) >= {"eval_loss", "eval_accuracy", "eval_f1"} and ev["eval_samples"] == 10
    test = json.loads((out / "test_results.json").read_text())
    assert test["test_samples"] == 60 and 0 <= test["test_accuracy"] <= 1
    assert (out / "test_confusion_matrix.png").stat().st_size > 1000
    scores = pipeline("audio-classification", model=str(out))(_wave(SPEECH / "keywords" / "yes" / "kal.flac"), top_k=5)
    assert {s["label"] for s in scores} == KEYWORDS and sum(s["score"] for s in scores) == pytest.approx(1, abs=1e-4)

    probe = tmp_path / "probe"
    assert main([recipe, *common, "--probe", "true", "--learning_rate", "1e-2", "--output_dir", str(probe)]) == 0
    result = json.loads((probe / "eval_results.json").read_text())
    weights = result["probe"]["layer_weights"]
    layers = json.loads((w2v2 / "config.json").read_text())["num_hidden_layers"]
    assert len(weights) == layers + 1 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert max(weights) - min(weights) > 1e-4  # the mixing weights trained (they start uniform)
    assert json.loads((probe / "layer_weights.json").read_text())["layer_weights"] == pytest.approx(weights)
    card = (probe / "README.md").read_text()
    assert (probe / "probe.safetensors").is_file() and "layer weights" in card
    # not a transformers model, and its card does not say it is (no library_name / pipeline_tag for the Hub widget)
    assert not (probe / "config.json").exists() and "pipeline_tag" not in card and "library_name" not in card
    assert "not a transformers model" in card


def _digits_folder(tmp_path, rows):
    folder = tmp_path / "audio"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file_name", "transcription"), *rows])
    return folder


def test_long_transcripts_are_filtered_and_other_rates_resampled(w2v2, tmp_path, capsys):
    from hfssl.finetune.run import main

    rows = [tuple(r) for r in list(csv.reader(open(SPEECH / "digits" / "metadata.csv")))[1:13]]
    folder = _digits_folder(tmp_path, [])
    for name, _ in rows:
        shutil.copy(SPEECH / "digits" / name, folder / name)
    wave, sr = sf.read(str(folder / rows[0][0]), dtype="float32")
    sf.write(str(folder / "slow.wav"), wave[::2], sr // 2)  # 8 kHz: resampled to 16 kHz on load
    short = SPEECH / "keywords" / "up" / "kal.flac"  # ~0.3 s: far fewer frames than the transcript needs
    shutil.copy(short, folder / "short.flac")
    rows += [("slow.wav", rows[0][1]), ("short.flac", "one two three four five six seven eight nine zero " * 3)]
    with open(folder / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file_name", "transcription"), *rows])
    out = tmp_path / "out"
    code = main([str(ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml"), "--model_name_or_path", str(w2v2),
                 "--train_dir", str(folder), "--validation_split_percentage", "0", "--max_steps", "1", "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    printed = json.loads(capsys.readouterr().out.split("results written")[0].strip())
    assert printed["train_filtered_too_long"] == 1 and printed["train_samples"] == 13


def test_empty_transcript_and_unknown_column_are_errors(w2v2, tmp_path, capsys):
    from hfssl.finetune.run import main

    folder = _digits_folder(tmp_path, [("a.flac", "one two"), ("b.flac", " ,. "), ("c.flac", "three")])
    for name in ("a.flac", "b.flac", "c.flac"):
        shutil.copy(SPEECH / "digits" / "kal_008.flac", folder / name)
    recipe = str(ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml")
    base = [recipe, "--model_name_or_path", str(w2v2), "--train_dir", str(folder), "--validation_split_percentage", "0"]
    assert main([*base, "--output_dir", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "1 train file(s) have an empty transcript" in err and "b.flac" in err
    assert main([*base, "--transcription_column_name", "text", "--output_dir", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "transcription_column_name 'text' is not a column" in err and "available columns: transcription" in err


def _encoder_state(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).state_dict()


def test_freeze_encoder_steps_trains_only_the_head_first(w2v2, tmp_path, capsys):
    """freeze_encoder_steps N: updates 1..N leave every encoder weight as pretrained (and the resumed state says
    so); from update N + 1 the encoder trains. Probes and negative values are refused before any work."""
    from hfssl.config import load_config
    from hfssl.finetune.config import FinetuneConfig
    from hfssl.finetune.run import main
    from hfssl.finetune.speech import AudioClassificationTask

    recipe = str(ROOT / "recipes" / "finetune" / "audio-classification-tiny-cpu.yaml")
    common = [recipe, "--model_name_or_path", str(w2v2), "--train_dir", str(SPEECH / "keywords"), "--freeze_encoder_steps", "3",
              "--freeze_feature_encoder", "false", "--eval_steps", "0"]
    pretrained = _encoder_state(w2v2)
    for steps, frozen in ((3, True), (5, False)):
        out = tmp_path / f"steps{steps}"
        assert main([*common, "--max_steps", str(steps), "--output_dir", str(out)]) == 0, capsys.readouterr().err[-2000:]
        tuned = _encoder_state(out)
        same = [k for k in pretrained if torch.equal(pretrained[k], tuned[k])]
        if frozen:
            assert same == list(pretrained)  # every encoder tensor, the conv front end included
        else:
            assert len(same) < len(pretrained) // 2
        log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
        assert len([r for r in log if "loss" in r]) == steps and all(math.isfinite(r["loss"]) for r in log if "loss" in r)

    cfg = load_config([*map(str, common), "--max_steps", "5", "--output_dir", str(tmp_path / "state")], {"finetune": FinetuneConfig}, "finetune")
    task = AudioClassificationTask(cfg)
    assert task.model.encoder_frozen and task.state_dict() == {"encoder_frozen": True}
    task.on_update(2, 5)
    assert task.model.encoder_frozen
    task.on_update(3, 5)
    assert not task.model.encoder_frozen
    again = AudioClassificationTask(cfg)  # a run resumed after update 3 must not freeze again
    again.load_state_dict(task.state_dict())
    assert not again.model.encoder_frozen

    for extra in (["--probe", "true"], ["--freeze_encoder_steps", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main([*common, *extra, "--output_dir", str(tmp_path / "bad")])
        assert exit_.value.code == 2 and "freeze_encoder_steps" in capsys.readouterr().err


def test_freeze_encoder_steps_under_two_processes(w2v2, tmp_path):
    """DDP: the frozen encoder's parameters get no gradient in the first updates; the run must go on past them
    (DDP is told to expect unused parameters) and then train the encoder on both processes alike."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    run_cli("run_finetune.py", [ROOT / "recipes" / "finetune" / "audio-classification-tiny-cpu.yaml", "--model_name_or_path", w2v2,
                                "--train_dir", SPEECH / "keywords", "--freeze_encoder_steps", "2", "--freeze_feature_encoder", "false",
                                "--max_steps", "4", "--eval_steps", "0", "--per_device_train_batch_size", "4", "--output_dir", out],
            launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    losses = [r["loss"] for r in read_log(out) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    pretrained, tuned = _encoder_state(w2v2), _encoder_state(out)
    assert sum(not torch.equal(pretrained[k], tuned[k]) for k in pretrained) > len(pretrained) // 2


def _keyword_hub(folder, splits: dict, broken_in=None):
    """A local Hub-style dataset (parquet shards, audio embedded as bytes) of the keyword fixtures: each split takes
    the clips whose index modulo 3 is in its set; `broken_in` gets one clip of undecodable bytes as well."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = sorted((SPEECH / "keywords").rglob("*.flac"))
    meta = {"info": {"features": {"audio": {"_type": "Audio"}, "label": {"dtype": "string", "_type": "Value"}}}}
    (folder / "data").mkdir(parents=True)
    for split, keep in splits.items():
        part = [p for i, p in enumerate(clips) if i % 3 in keep]
        audio = [{"bytes": p.read_bytes(), "path": p.name} for p in part]
        labels = [p.parent.name for p in part]
        if split == broken_in:
            audio, labels = audio + [{"bytes": b"not audio", "path": "broken.flac"}], labels + ["yes"]
        table = pa.table({"audio": audio, "label": labels}).replace_schema_metadata({"huggingface": json.dumps(meta)})
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder, {split: sum(i % 3 in keep for i in range(len(clips))) for split, keep in splits.items()}


def test_audio_splits_of_a_dataset_are_evaluated(w2v2, tmp_path, capsys):
    """dataset_name for audio: its test split is evaluated after training, and with do_train false its validation
    and test splits are (before, nothing was evaluated and the run exited 0). Bad test clips are skipped and listed
    under on_bad_audio skip; a dataset with nothing to evaluate is an error."""
    from hfssl.finetune.run import main

    hub, sizes = _keyword_hub(tmp_path / "hub", {"train": {0, 1}, "test": {2}}, broken_in="test")
    recipe = str(ROOT / "recipes" / "finetune" / "audio-classification-tiny-cpu.yaml")
    out = tmp_path / "trained"
    args = [recipe, "--model_name_or_path", str(w2v2), "--dataset_name", str(hub), "--max_steps", "2", "--on_bad_audio", "skip"]
    assert main([*args, "--output_dir", str(out)]) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((out / "test_results.json").read_text())["test_samples"] == sizes["test"]  # 20 good clips, broken one out
    assert json.loads((out / "eval_results.json").read_text())["eval_samples"] == 10  # 20% of train, stratified
    listed = (out / "skipped_audio_test.tsv").read_text().splitlines()
    assert listed[0] == "# skipped 1 audio file(s)" and listed[2].startswith(f"{hub}[test][{sizes['test']}] (broken.flac)\t")
    capsys.readouterr()  # what the skip run wrote (its warning names broken.flac too)
    assert main([*args, "--on_bad_audio", "error", "--output_dir", str(tmp_path / "strict")]) == 2
    assert "broken.flac" in capsys.readouterr().err

    evals, _ = _keyword_hub(tmp_path / "evals", {"validation": {0}, "test": {1, 2}})
    out2 = tmp_path / "evaluated"
    assert main([recipe, "--model_name_or_path", str(out), "--do_train", "false", "--dataset_name", str(evals),
                 "--output_dir", str(out2)]) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((out2 / "eval_results.json").read_text())["eval_samples"] == 20
    assert json.loads((out2 / "test_results.json").read_text())["test_samples"] == 40

    only_train, _ = _keyword_hub(tmp_path / "only_train", {"train": {0, 1, 2}})
    assert main([recipe, "--model_name_or_path", str(out), "--do_train", "false", "--dataset_name", str(only_train),
                 "--output_dir", str(tmp_path / "nothing")]) == 2
    assert "Nothing to evaluate" in capsys.readouterr().err


def test_ctc_batch_budget_shorter_than_an_utterance_is_an_error(w2v2, tmp_path, capsys):
    """CTC keeps utterances whole: a max_batch_seconds that cannot hold the longest one is refused before training,
    naming the file (it was a traceback from the batch planner)."""
    from hfssl.finetune.run import main

    code = main([str(ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml"), "--model_name_or_path", str(w2v2),
                 "--train_dir", str(SPEECH / "digits"), "--max_batch_seconds", "0.5", "--max_steps", "1",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "max_batch_seconds 0.5 is shorter than the training file" in err and str(SPEECH / "digits") in err
