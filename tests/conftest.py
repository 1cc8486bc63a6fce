import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = FIXTURES / "text" / "corpus.txt"

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A BERT small enough for CPU tests; dropout stays ON so exact-resume tests cover its RNG.
# The MLM recipes' speed settings (bf16 where the CPU has it, compiled, eager attention), pinned off: the tests' runs
# are seconds long (compiling would dominate) and compare numbers with fp32 computations, across runs and machines.
EXACT = ["--mixed_precision", "no", "--torch_compile", "false", "--attn_implementation", "none"]
TINY_MLM = [
    str(ROOT / "recipes" / "mlm" / "tiny-cpu.yaml"),
    "--train_file", str(CORPUS),
    # The tests check BERT specifics (module names, [CLS] head, padding-free batches): pinned here so they
    # do not follow the recipe's architecture (ModernBERT-style since the payoff ablations, docs/payoff/ablations.md).
    "--model_type", "bert",
    "--config_overrides", "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,max_position_embeddings=64",
    "--vocab_size", "1000", "--max_seq_length", "64",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "2e-3", "--warmup_steps", "5", "--logging_steps", "5",
    "--validation_split_percentage", "10",
    *EXACT,
]


def run_cli(script: str, args: list[str], env: dict | None = None, timeout: int = 600, check: bool = True, launcher: list[str] | None = None):
    cmd = (launcher or [sys.executable]) + [str(ROOT / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_log(output_dir) -> list[dict]:
    """The log's complete rows. Tests poll the log of a run still writing it, so a last line without
    its newline is a row half written (not yet a row) and is left out."""
    path = Path(output_dir) / "training_log.jsonl"
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def train_losses(output_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(output_dir) if "loss" in r}


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory):
    """One tiny MLM pretraining run through the CLI, shared by the tests that need a pretrained model."""
    out = tmp_path_factory.mktemp("mlm") / "out"
    run_cli("run_pretrain.py", [*TINY_MLM, "--output_dir", out, "--max_steps", "60", "--eval_steps", "30", "--save_steps", "30"])
    return out


# The tiny wav2vec 2.0 recipe on the synthesized speech fixtures (also the upstream of the speech fine-tuning tests).
# The recipe at 48 updates instead of its 2000, with base's loss weights: those learn (accuracy well above chance,
# both codebook groups in use) within 48 updates on the fixtures; the recipe's own weights pay only after a
# phase at chance (its header), too long for a test.
W2V2_RUN = [ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml", "--train_dir", FIXTURES / "speech" / "unlabeled",
            "--max_steps", 48, "--save_steps", 8, "--logging_steps", 8, "--eval_steps", 0, "--validation_split_percentage", 10,
            "--max_eval_batches", 1, "--diversity_loss_weight", 0.05, "--feature_penalty_weight", 10, "--feature_grad_scale", 0.1]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # fastest on 2 busy cores; every run of a comparison uses the same threads


@pytest.fixture(scope="session")
def tiny_w2v2(tmp_path_factory):
    """One tiny wav2vec 2.0 pretraining run through the CLI, shared by pretraining and fine-tuning tests."""
    out = tmp_path_factory.mktemp("w2v2") / "out"
    run_cli("run_pretrain.py", [*W2V2_RUN, "--output_dir", out], env=ONE_THREAD)
    return out
