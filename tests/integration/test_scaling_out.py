"""Several processes, several nodes, FSDP2, LayerDrop (torchrun, gloo, CPU).

* A 2-process checkpoint resumes on 1 process with gradient accumulation 2 (same global batch).
* A simulated 2-node run (`torchrun --nnodes 2 --node_rank 0|1`, one process each, localhost
  rendezvous) pretrains, checkpoints, stops together when one node gets SIGTERM, is killed and
  resumes to the uninterrupted run's losses.
* An output_dir one node cannot see (a private mount) is refused before training.
* LayerDrop 0.5 with 2 processes (DDP, and FSDP2) gives the losses of 1 process with accumulation 2.
* FSDP2 (through Accelerate, forced on CPU by tests/integration/fsdp_on_cpu.py) for MLM, ELECTRA,
  wav2vec 2.0 and HuBERT pretraining and CTC fine-tuning: same losses as one process, padded evaluation, sharded
  checkpoints that resume exactly, final folders that `from_pretrained` and `pipeline` load.

Each torchrun start costs 15-30 s on a busy 2-core machine: the tests that need several (all together
about 6 minutes) are marked slow; `-m "not slow"` keeps the 1-process resume and the unshared
output_dir here, and the fp16 and LayerDrop unit tests elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, ONE_THREAD, ROOT, TINY_MLM, read_log, run_cli, train_losses

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
MLM = [*TINY_MLM, "--tokenizer_name", FIXTURES / "text" / "tokenizer", "--per_device_train_batch_size", "4",
       "--max_steps", "16", "--save_steps", "4", "--save_total_limit", "none", "--eval_steps", "8", "--max_eval_batches", "3",
       "--logging_steps", "1"]


def _fsdp_env() -> dict:
    """What `accelerate launch --config_file recipes/accelerate/fsdp.yaml` puts in the environment of
    each process (Accelerate's own launcher code), without mixed precision: CPU processes run fp32."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"), "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {**ONE_THREAD, **{k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}}


FSDP_ENV = _fsdp_env()
FSDP_SCRIPT = "tests/integration/fsdp_on_cpu.py"
FINAL = ("model.safetensors", "train_results.json", "config.json", "README.md")


def _two(port: int) -> list:
    return [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port)]


def _close(a: dict, b: dict, rel=1e-5):
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), (step, a[step], b[step])


def _eval_losses(out: Path) -> dict:
    return {r["step"]: r["eval_loss"] for r in read_log(out) if "eval_loss" in r}


def _back_to(out: Path, source: Path, step: int) -> Path:
    """A copy of run `source` as it was right after checkpoint-<step> was written."""
    shutil.copytree(source, out)
    for p in out.glob("checkpoint-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    for name in FINAL:
        (out / name).unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def mlm_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm-one") / "out"
    run_cli("run_pretrain.py", [*MLM, "--gradient_accumulation_steps", "2", "--output_dir", out], env=ONE_THREAD)
    return out


@pytest.fixture(scope="module")
def mlm_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm-two") / "out"
    run_cli("run_pretrain.py", [*MLM, "--output_dir", out], launcher=_two(29631), env=ONE_THREAD)
    return out


# ----------------------------------------------------------------------------------- process count, nodes

def test_two_process_checkpoint_resumes_on_one_process_with_accumulation_2(mlm_two, tmp_path):
    out = _back_to(tmp_path / "resumed", mlm_two, 8)
    proc = run_cli("run_pretrain.py", [*MLM, "--gradient_accumulation_steps", "2", "--output_dir", out,
                                       "--resume_from_checkpoint", "latest"], env=ONE_THREAD)
    assert "on 1 processes (saved with 2), same global batch: the same batches, masks, dropout" in proc.stderr
    resumed, full = train_losses(out), train_losses(mlm_two)
    assert sorted(resumed) == list(range(1, 17))
    _close(resumed, full)
    _close(_eval_losses(out), _eval_losses(mlm_two))


def _start_nodes(out: Path, port: int, extra=()) -> list[subprocess.Popen]:
    """Two 'nodes' on this machine: one torchrun each, node ranks 0 and 1, one process per node."""
    procs = []
    for node in (0, 1):
        cmd = [*TORCHRUN, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(ROOT / "run_pretrain.py"), *map(str, MLM), "--output_dir", str(out), *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, **ONE_THREAD}, start_new_session=True))
    return procs


def _wait_for_step(out: Path, procs, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "training_log.jsonl").exists() and max(train_losses(out), default=0) >= step:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a node ended before step {step}: {[p.stderr.read()[-2000:] for p in procs]}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def _worker(agent: subprocess.Popen) -> int:
    """The pid of the one training process a torchrun agent started."""
    deadline = time.time() + 60
    while time.time() < deadline:
        children = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise AssertionError("no worker process")


@pytest.mark.slow  # see the module docstring
def test_two_nodes_stop_together_on_sigterm_are_killed_and_resume_exactly(mlm_two, tmp_path):
    """Simulated 2 nodes (one process each): SIGTERM to node 1 only (a cluster preempting one node)
    makes both processes checkpoint after the same update and exit 143; a resumed run is then killed
    with SIGKILL on both nodes; the next resume finishes with the uninterrupted run's losses, bit for bit."""
    from hfssl.checkpointing import find_latest_checkpoint, verify_checkpoint

    out = tmp_path / "nodes"
    procs = _start_nodes(out, 29632)
    _wait_for_step(out, procs, 2)
    os.kill(_worker(procs[1]), signal.SIGTERM)
    for p in procs:
        p.wait(timeout=300)
    stopped, _ = find_latest_checkpoint(out)
    assert stopped is not None and verify_checkpoint(stopped)["step"] == max(train_losses(out)) < 16
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in stopped.iterdir()}  # both processes wrote theirs

    procs = _start_nodes(out, 29633, ["--resume_from_checkpoint", "latest"])
    _wait_for_step(out, procs, verify_checkpoint(stopped)["step"] + 4)
    for p in procs:  # both nodes die at once, as when a job is cancelled
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill; the test proves nothing"
    procs = _start_nodes(out, 29642, ["--resume_from_checkpoint", "latest"])
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-3000:] for p in procs]
    # Two processes on two nodes compute exactly what two on one node do.
    assert train_losses(out) == train_losses(mlm_two)
    assert _eval_losses(out) == _eval_losses(mlm_two)
    a, b = load_file(out / "model.safetensors"), load_file(mlm_two / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -rm` (user and mount namespaces) to give one node a private disk")
def test_an_output_dir_one_node_cannot_see_is_refused_before_training(tmp_path):
    """Node 1 runs in its own mount namespace with an empty tmpfs over output_dir's parent: like a
    node-local disk at the same path. Both processes stop with the same message; nothing trains."""
    shared = tmp_path / "disk"
    shared.mkdir()
    out = shared / "out"
    base = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", "29634"]
    run = [str(ROOT / "run_pretrain.py"), *map(str, MLM), "--output_dir", str(out)]
    env = {**os.environ, **ONE_THREAD}
    node0 = subprocess.Popen([*base, "--node_rank", "0", *run], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    private = f'mount -t tmpfs tmpfs "{shared}" && exec "$@"'
    node1 = subprocess.Popen(["unshare", "-rm", "sh", "-c", private, "sh", *base, "--node_rank", "1", *run], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = [(p.wait(timeout=600), p.stderr.read()) for p in (node0, node1)]
    for code, err in results:
        assert code != 0
        assert "is not shared by every process: process 1 on host" in err and "cannot see the lock file" in err, err[-3000:]
    assert not (out / "training_log.jsonl").exists() and not (out / ".hfssl.lock").exists()


# ----------------------------------------------------------------------------------- FSDP2

@pytest.fixture(scope="module")
def mlm_fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm-fsdp") / "out"
    # fsdp_cpu_ram_efficient_loading on (as `accelerate config` suggests): hfssl must turn it off, or the
    # decoder would train untied from the embeddings.
    proc = run_cli(FSDP_SCRIPT, ["pretrain", *MLM, "--output_dir", out], launcher=_two(29635),
                   env={**FSDP_ENV, "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"})
    return out, proc.stderr


@pytest.mark.slow  # see the module docstring
def test_fsdp_mlm_trains_like_one_process_and_saves_a_plain_model(mlm_fsdp, mlm_one):
    from transformers import AutoModelForMaskedLM, pipeline

    out, log = mlm_fsdp
    assert "FSDP: one unit per BertLayer" in log and "fsdp_cpu_ram_efficient_loading turned off" in log
    _close(train_losses(out), train_losses(mlm_one))
    _close(_eval_losses(out), _eval_losses(mlm_one))  # 3 eval batches on 2 processes: one pads
    shards = sorted(p.name for p in (out / "checkpoint-8" / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    model = AutoModelForMaskedLM.from_pretrained(out)  # one ordinary folder, full weights
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    a, b = load_file(out / "model.safetensors"), load_file(mlm_one / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    fill = pipeline("fill-mask", model=str(out))
    assert len(fill("the [MASK] of the")) == 5


@pytest.mark.slow  # see the module docstring
def test_fsdp_sharded_checkpoint_resumes_exactly_and_merges(mlm_fsdp, tmp_path):
    out = _back_to(tmp_path / "resumed", mlm_fsdp[0], 8)
    run_cli(FSDP_SCRIPT, ["pretrain", *MLM, "--output_dir", out, "--resume_from_checkpoint", "latest"],
            launcher=_two(29636), env=FSDP_ENV)
    assert train_losses(out) == train_losses(mlm_fsdp[0])
    final = load_file(out / "model.safetensors")
    assert all(torch.equal(final[k], v) for k, v in load_file(mlm_fsdp[0] / "model.safetensors").items())
    # `accelerate merge-weights` turns a sharded checkpoint into one safetensors file of the wrapper's weights.
    merged = tmp_path / "merged"
    subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "merge-weights",
                    str(out / "checkpoint-16" / "pytorch_model_fsdp_0"), str(merged)], check=True, capture_output=True)
    weights = {k.removeprefix("mlm."): v for k, v in load_file(merged / "model.safetensors").items()}
    assert all(torch.equal(weights[k], v) for k, v in final.items())


@pytest.mark.slow  # see the module docstring
def test_fsdp_with_torch_compile_trains_the_same_and_saves_the_full_model(mlm_fsdp, tmp_path):
    """torch.compile puts `_orig_mod.` into parameter names, not into the gathered state dict's keys: the final
    save under FSDP once failed on it (KeyError), found by benchmarks/check_gpu_distributed.py."""
    from transformers import pipeline

    out = tmp_path / "compiled"
    run_cli(FSDP_SCRIPT, ["pretrain", *MLM, "--torch_compile", "true", "--output_dir", out], launcher=_two(29638), env=FSDP_ENV)
    # Compiled dropout draws other random numbers than eager (from the first step), so the runs agree closely, not exactly.
    _close(train_losses(out), train_losses(mlm_fsdp[0]), rel=2e-2)
    compiled, eager = load_file(out / "model.safetensors"), load_file(mlm_fsdp[0] / "model.safetensors")
    assert compiled.keys() == eager.keys()
    assert all(compiled[k].shape == eager[k].shape for k in eager)  # full (gathered) tensors
    difference = sum(float((compiled[k] - eager[k]).norm() ** 2) for k in eager) ** 0.5
    assert difference < 0.1 * sum(float(eager[k].norm() ** 2) for k in eager) ** 0.5  # measured 4%; a lost shard: ~50%
    assert len(pipeline("fill-mask", model=str(out))("the [MASK] of the")) == 5


@pytest.mark.slow  # see the module docstring
def test_a_ddp_checkpoint_is_not_loaded_under_fsdp(mlm_two, tmp_path):
    out = _back_to(tmp_path / "other", mlm_two, 4)
    proc = run_cli(FSDP_SCRIPT, ["pretrain", *MLM, "--output_dir", out, "--resume_from_checkpoint", "latest"],
                   launcher=_two(29637), env=FSDP_ENV, check=False)
    assert proc.returncode != 0 and "was written under DDP or one process; this run is under FSDP (sharded)" in proc.stderr


# ----------------------------------------------------------------------------------- LayerDrop, speech under FSDP

def _layerdrop_recipe(tmp_path: Path, name: str) -> Path:
    recipe = tmp_path / name.replace("/", "-")
    recipe.write_text((ROOT / "recipes" / name).read_text().replace("  layerdrop: 0.05", "  layerdrop: 0.5"))
    assert "layerdrop: 0.5" in recipe.read_text()
    return recipe


W2V2 = ["--train_dir", FIXTURES / "speech" / "unlabeled", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "2", "--max_eval_batches", "3", "--eval_steps", "2"]


@pytest.fixture(scope="module")
def w2v2_runs(tmp_path_factory):
    """wav2vec 2.0 with LayerDrop 0.5: 1 process with accumulation 2, 2 processes (DDP), 2 processes (FSDP),
    2 processes (FSDP) with gradient checkpointing."""
    root = tmp_path_factory.mktemp("w2v2-layerdrop")
    recipe = _layerdrop_recipe(root, "wav2vec2/tiny-cpu.yaml")
    runs = {name: root / name for name in ("one", "ddp", "fsdp", "fsdp-checkpointing")}
    run_cli("run_pretrain.py", [recipe, *W2V2, "--gradient_accumulation_steps", "2", "--output_dir", runs["one"]], env=ONE_THREAD)
    run_cli("run_pretrain.py", [recipe, *W2V2, "--output_dir", runs["ddp"]], launcher=_two(29638), env=ONE_THREAD)
    run_cli(FSDP_SCRIPT, ["pretrain", recipe, *W2V2, "--output_dir", runs["fsdp"]], launcher=_two(29639), env=FSDP_ENV)
    run_cli(FSDP_SCRIPT, ["pretrain", recipe, *W2V2, "--gradient_checkpointing", "true", "--output_dir", runs["fsdp-checkpointing"]],
            launcher=_two(29645), env=FSDP_ENV)
    return runs


@pytest.mark.slow  # see the module docstring
def test_wav2vec2_layerdrop_two_processes_equal_one_with_accumulation(w2v2_runs):
    one = train_losses(w2v2_runs["one"])
    assert sorted(one) == [1, 2, 3, 4]
    # transformers' skipping LayerDrop stops DDP at the first dropped layer; recomputed layers must
    # make the same drop decisions and dropout as in the forward.
    for kind in ("ddp", "fsdp", "fsdp-checkpointing"):
        _close(train_losses(w2v2_runs[kind]), one)
        _close(_eval_losses(w2v2_runs[kind]), _eval_losses(w2v2_runs["one"]))


@pytest.mark.slow  # see the module docstring
def test_wav2vec2_under_fsdp_saves_a_loadable_model_with_its_weight_norm_conv(w2v2_runs):
    from transformers import Wav2Vec2Model

    out = w2v2_runs["fsdp"]
    assert json.loads((out / "config.json").read_text())["layerdrop"] == 0.5  # the user's value, not the 0 used inside
    a, b = load_file(out / "model.safetensors"), load_file(w2v2_runs["one"] / "model.safetensors")
    assert any("pos_conv_embed.conv.parametrizations.weight.original" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    Wav2Vec2Model.from_pretrained(out)


@pytest.mark.slow  # see the module docstring
def test_ctc_fine_tuning_under_fsdp_keeps_the_frozen_feature_encoder(w2v2_runs, tmp_path):
    """CTC fine-tuning of the FSDP-pretrained model under FSDP: the feature encoder is frozen (no
    gradient, unchanged), evaluation runs through predict_step on both processes with uneven shares."""
    from transformers import pipeline

    out = tmp_path / "ctc"
    run_cli(FSDP_SCRIPT, ["finetune", ROOT / "recipes" / "finetune" / "speech-recognition-ctc-tiny-cpu.yaml",
                          "--model_name_or_path", w2v2_runs["fsdp"], "--output_dir", out, "--max_steps", "4", "--eval_steps", "2",
                          "--save_steps", "2", "--per_device_train_batch_size", "4"], launcher=_two(29640), env=FSDP_ENV)
    result = json.loads((out / "eval_results.json").read_text())
    assert result["eval_samples"] == 9 and result["eval_loss"] > 0
    tuned, upstream = load_file(out / "model.safetensors"), load_file(w2v2_runs["fsdp"] / "model.safetensors")
    conv = [k for k in upstream if k.startswith("wav2vec2.feature_extractor.")]
    assert conv and all(torch.equal(tuned[k], upstream[k]) for k in conv)
    encoder = "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(tuned[encoder], upstream[encoder])
    import soundfile as sf

    wave, rate = sf.read(str(FIXTURES / "speech" / "digits" / "kal_008.flac"), dtype="float32")
    asr = pipeline("automatic-speech-recognition", model=str(out))
    assert isinstance(asr({"raw": wave, "sampling_rate": rate})["text"], str)


@pytest.mark.slow  # see the module docstring
def test_freeze_encoder_steps_under_fsdp(w2v2_runs, tmp_path):
    """freeze_encoder_steps under FSDP2: the frozen encoder's shards get no gradient and stay as pretrained
    through update N; from N + 1 they train."""
    from transformers import Wav2Vec2Model

    upstream = Wav2Vec2Model.from_pretrained(w2v2_runs["fsdp"]).state_dict()
    for steps, port in ((2, 29653), (4, 29654)):
        out = tmp_path / f"steps{steps}"
        run_cli(FSDP_SCRIPT, ["finetune", ROOT / "recipes" / "finetune" / "audio-classification-tiny-cpu.yaml",
                              "--model_name_or_path", w2v2_runs["fsdp"], "--train_dir", FIXTURES / "speech" / "keywords",
                              "--freeze_encoder_steps", "2", "--freeze_feature_encoder", "false", "--max_steps", steps,
                              "--eval_steps", "0", "--per_device_train_batch_size", "4", "--output_dir", out],
                launcher=_two(port), env=FSDP_ENV)
        tuned = Wav2Vec2Model.from_pretrained(out).state_dict()
        changed = sum(not torch.equal(upstream[k], tuned[k]) for k in upstream)
        assert changed == 0 if steps == 2 else changed > len(upstream) // 2, (steps, changed)


@pytest.mark.slow  # see the module docstring
def test_hubert_layerdrop_ddp_and_fsdp_equal_one_process_with_accumulation(tmp_path):
    recipe = _layerdrop_recipe(tmp_path, "hubert/tiny-cpu-iter1.yaml")
    args = [recipe, "--train_dir", FIXTURES / "speech" / "unlabeled", "--max_steps", "4", "--save_steps", "0", "--eval_steps", "2",
            "--max_eval_batches", "3", "--per_device_eval_batch_size", "2", "--logging_steps", "1",
            "--per_device_train_batch_size", "4", "--kmeans_iterations", "20"]
    one, ddp, fsdp = tmp_path / "one", tmp_path / "ddp", tmp_path / "fsdp"
    run_cli("run_pretrain.py", [*args, "--gradient_accumulation_steps", "2", "--output_dir", one], env=ONE_THREAD)
    run_cli("run_pretrain.py", [*args, "--output_dir", ddp], launcher=_two(29641), env=ONE_THREAD)
    run_cli(FSDP_SCRIPT, ["pretrain", *args, "--output_dir", fsdp], launcher=_two(29643), env=FSDP_ENV)
    for out in (ddp, fsdp):
        _close(train_losses(out), train_losses(one))
        _close(_eval_losses(out), _eval_losses(one))
    for name in ("model.safetensors", "hubert_head.safetensors"):  # encoder, and projection + cluster embeddings
        a, b = load_file(fsdp / name), load_file(one / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), name


ELECTRA = [ROOT / "recipes" / "electra" / "electra-small.yaml", "--mixed_precision", "no", "--train_file", FIXTURES / "text" / "corpus.txt",
           "--tokenizer_name", FIXTURES / "text" / "tokenizer", "--config_overrides",
           "hidden_size=64,embedding_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,max_position_embeddings=64",
           "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--max_steps", "6", "--save_steps", "3", "--eval_steps", "3",
           "--logging_steps", "1", "--learning_rate", "2e-3", "--warmup_steps", "2", "--validation_split_percentage", "10",
           "--max_eval_batches", "3"]


@pytest.mark.slow  # see the module docstring
def test_electra_under_fsdp_keeps_the_shared_embeddings_shared(tmp_path):
    """Generator and discriminator share their embeddings: under FSDP they must stay one parameter."""
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    run_cli("run_pretrain.py", [*ELECTRA, "--gradient_accumulation_steps", "2", "--output_dir", one], env=ONE_THREAD)
    run_cli(FSDP_SCRIPT, ["pretrain", *ELECTRA, "--output_dir", fsdp], launcher=_two(29644), env=FSDP_ENV)
    _close(train_losses(fsdp), train_losses(one))
    _close(_eval_losses(fsdp), _eval_losses(one))
    discriminator, generator = load_file(fsdp / "model.safetensors"), load_file(fsdp / "generator" / "model.safetensors")
    key = "electra.embeddings.word_embeddings.weight"
    assert torch.equal(discriminator[key], generator[key])
    torch.testing.assert_close(discriminator[key], load_file(one / "model.safetensors")[key], rtol=1e-4, atol=1e-6)
