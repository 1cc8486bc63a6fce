"""Loop options that must change nothing but speed/memory, and trackers through Accelerate."""

import pytest

from conftest import CORPUS, TINY_MLM, run_cli, train_losses

BASE = [*TINY_MLM, "--tokenizer_name", CORPUS.parent / "tokenizer", "--max_steps", "3", "--save_steps", "0",
        "--eval_steps", "0", "--max_eval_batches", "1"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "o"
    run_cli("run_pretrain.py", [*BASE, "--output_dir", out])
    return train_losses(out)


def test_gradient_checkpointing_gives_the_same_losses(plain, tmp_path):
    run_cli("run_pretrain.py", [*BASE, "--output_dir", tmp_path / "o", "--gradient_checkpointing", "true"])
    ckpt = train_losses(tmp_path / "o")
    assert ckpt == pytest.approx(plain, rel=1e-5)


def test_bf16_autocast_runs_close_to_fp32(plain, tmp_path):
    run_cli("run_pretrain.py", [*BASE, "--output_dir", tmp_path / "o", "--mixed_precision", "bf16"])
    bf16 = train_losses(tmp_path / "o")
    assert bf16[1] == pytest.approx(plain[1], abs=0.05)
    assert bf16 != plain  # autocast really ran in bf16


def test_tensorboard_tracker_writes_events(tmp_path):
    run_cli("run_pretrain.py", [*BASE, "--output_dir", tmp_path / "o", "--report_to", "tensorboard", "--logging_steps", "1"])
    events = list((tmp_path / "o" / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
