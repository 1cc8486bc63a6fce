"""Exact resume after a real process kill, SIGTERM checkpoints, and 2-process parity (torchrun, gloo)."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_MLM, read_log, run_cli, train_losses

RUN = [*TINY_MLM, "--tokenizer_name", str(ROOT / "tests" / "fixtures" / "text" / "tokenizer"), "--max_steps", "24", "--save_steps", "4", "--eval_steps", "0", "--gradient_accumulation_steps", "2",
       "--per_device_train_batch_size", "4"]


def _start(out: Path, extra=()):
    cmd = [sys.executable, str(ROOT / "run_pretrain.py"), *map(str, RUN), "--output_dir", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out: Path, proc, step: int, timeout: float = 300) -> None:
    log = out / "training_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and any(r.get("step", 0) >= step for r in read_log(out) if "loss" in r):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def _weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    run_cli("run_pretrain.py", [*RUN, "--output_dir", out])
    return out


def test_kill_9_then_resume_matches_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out)
    _wait_for_step(out, proc, 10)
    proc.send_signal(signal.SIGKILL)  # a real kill, no chance to clean up
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = max(train_losses(out))
    run_cli("run_pretrain.py", [*RUN, "--output_dir", out, "--resume_from_checkpoint", "latest"])
    resumed = train_losses(out)
    full = train_losses(uninterrupted)
    assert killed_at < 24 and sorted(resumed) == list(range(1, 25))
    assert resumed == full  # bitwise: same data order, masks, dropout, optimizer and scheduler state
    a, b = _weights(out), _weights(uninterrupted)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_writes_a_complete_checkpoint_and_exits_143(tmp_path):
    out = tmp_path / "term"
    proc = _start(out, ["--save_steps", "0"])
    _wait_for_step(out, proc, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    from hfssl.checkpointing import find_latest_checkpoint, verify_checkpoint

    ckpt, damaged = find_latest_checkpoint(out)
    assert ckpt is not None and not damaged
    assert verify_checkpoint(ckpt)["step"] == max(train_losses(out))


def test_half_written_checkpoint_is_never_resumed(uninterrupted, tmp_path):
    out = tmp_path / "partial"
    shutil.copytree(uninterrupted, out)
    # A save interrupted mid-way leaves a temp folder; a damaged newest checkpoint must be skipped.
    (out / ".tmp-checkpoint-28").mkdir()
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    explicit = run_cli("run_pretrain.py", [*RUN, "--output_dir", out, "--resume_from_checkpoint", newest], check=False)
    assert explicit.returncode == 2 and "truncated" in explicit.stderr and str(weights) in explicit.stderr
    proc = run_cli("run_pretrain.py", [*RUN, "--max_steps", "26", "--output_dir", out, "--resume_from_checkpoint", "latest"])
    assert "Skipping damaged checkpoint" in proc.stderr and str(weights) in proc.stderr
    resumed_from = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p != newest and int(p.name.split("-")[1]) < int(newest.name.split("-")[1]))
    assert f"Resumed from {out / f'checkpoint-{resumed_from}'}" in proc.stderr


def test_two_runs_started_together_one_trains_the_other_is_refused(tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, str(ROOT / "run_pretrain.py"), *map(str, RUN), "--max_steps", "4", "--save_steps", "2",
           "--output_dir", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    # The holder is named once it has written its pid; a loser that looks in the first instant sees it starting.
    assert ("is in use by another run (pid" in refused or "is in use by another run (a run that is starting" in refused)
    assert f"lock file {out / '.hfssl.lock'}" in refused
    # The winner's run is whole: one log of 4 updates, its own checkpoints, no lock left behind.
    assert sorted(train_losses(out)) == [1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / ".hfssl.lock").exists()


def test_resume_after_kill_without_the_run_tokenizer_restores_it(tmp_path):
    """The run trains its own tokenizer (no --tokenizer_name): after a kill, a missing tokenizer folder
    comes back from the checkpoint instead of a newly trained one whose ids mean other tokens."""
    args = [a for a in RUN if a not in ("--tokenizer_name", str(ROOT / "tests" / "fixtures" / "text" / "tokenizer"))]
    out = tmp_path / "own-tokenizer"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pretrain.py"), *map(str, args), "--output_dir", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(out, proc, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill; the test proves nothing"
    saved = (out / "tokenizer" / "tokenizer.json").read_text()
    shutil.rmtree(out / "tokenizer")
    resumed = run_cli("run_pretrain.py", [*args, "--output_dir", out, "--resume_from_checkpoint", "latest"])
    assert "restoring it from the checkpoint" in resumed.stderr
    assert (out / "tokenizer" / "tokenizer.json").read_text() == saved
    assert (out / "tokenizer.json").read_text() == saved  # the final model's tokenizer is the run's


def test_resume_with_another_global_batch_is_refused(uninterrupted, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(uninterrupted, out)
    proc = run_cli("run_pretrain.py", [*RUN, "--output_dir", out, "--resume_from_checkpoint", "latest",
                                       "--per_device_train_batch_size", "8"], check=False)
    assert proc.returncode == 2 and "global batch size 8" in proc.stderr


def test_two_processes_match_one_process_with_accumulation(uninterrupted, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    run_cli("run_pretrain.py", [*RUN, "--output_dir", out, "--gradient_accumulation_steps", "1", "--save_steps", "0"],
            launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    two, one = train_losses(out), train_losses(uninterrupted)
    assert sorted(two) == sorted(one)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), step
    a, b = _weights(out), _weights(uninterrupted)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_two_processes_stream_shards_of_unequal_length(tmp_path):
    """--streaming with 2 processes: one file is split by example, so 95 documents give rank 0 six
    batches of 8 and rank 1 five. The processes agree on the end of each pass: every epoch has the
    shorter shard's 5 updates, and the run goes on through later passes to max_steps."""
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(ROOT.joinpath("tests/fixtures/text/corpus.txt").read_text().splitlines(keepends=True)[:95]))
    out = tmp_path / "ddp-stream"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518"]
    run_cli("run_pretrain.py", [*TINY_MLM, "--train_file", docs, "--validation_file", docs, "--streaming", "true",
                                "--line_by_line", "true", "--tokenizer_name", ROOT / "tests/fixtures/text/tokenizer",
                                "--max_steps", "12", "--save_steps", "0", "--eval_steps", "0", "--output_dir", out],
            launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    epochs = [r["epoch"] for r in read_log(out) if "loss" in r]
    assert epochs == [0] * 5 + [1] * 5 + [2] * 2
