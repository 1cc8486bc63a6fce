"""The masked-positions-only head equals the full head, and the loop normalizes by the global target count."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM

from conftest import CORPUS, EXACT, ROOT
from hfssl.objectives import load_config
from hfssl.data.batching import batch_seed
from hfssl.objectives.mlm.loss import HEADS, SparseMaskedLM
from hfssl.objectives.mlm.objective import MLMObjective
from hfssl.trainer import train


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "modernbert"])
def test_sparse_head_matches_full_forward(model_type):
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=101)
    if model_type == "distilbert":
        sizes = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=101)
    if model_type == "modernbert":
        sizes.update(global_attn_every_n_layers=1, local_attention=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     cls_token_id=1, sep_token_id=2)
    config = AutoConfig.for_model(model_type, **sizes)
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(config).eval()
    assert model_type in HEADS
    ids = torch.randint(5, 101, (3, 12))
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4]] = ids[0, [1, 4]]
    labels[2, 3] = ids[2, 3]
    out = SparseMaskedLM(mlm)(input_ids=ids, attention_mask=attention, labels=labels)
    with torch.no_grad():
        full = mlm(input_ids=ids, attention_mask=attention).logits
    sel = labels != -100
    expected = F.cross_entropy(full[sel], labels[sel], reduction="sum")
    assert out["loss_sum"].item() == pytest.approx(expected.item(), rel=1e-5)



def test_update_loss_is_sum_over_global_masked_count(tmp_path):
    """Step 1's logged loss = (sum of both micro-batches' token losses) / (their total masked tokens),
    not the mean of two per-micro-batch means (which differ when masked counts differ)."""
    cfg = load_config([
        str(ROOT / "recipes/mlm/tiny-cpu.yaml"), *EXACT, "--train_file", str(CORPUS), "--output_dir", str(tmp_path / "o"), "--model_type", "bert",
        "--tokenizer_name", str(ROOT / "tests/fixtures/text/tokenizer"), "--max_seq_length", "64",
        "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,max_position_embeddings=64",
        "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "2", "--max_steps", "1",
        "--eval_steps", "0", "--save_steps", "0", "--validation_split_percentage", "5"])
    torch.manual_seed(0)
    objective = MLMObjective(cfg)
    initial = copy.deepcopy(objective.model)
    plan = objective.batch_plan(0, cfg.seed)
    sums, counts = [], []
    for g in range(2):
        batch = objective.collator([objective.train_dataset[i] for i in plan[g]], seed=batch_seed(cfg.seed, 0, g), progress=0.0)
        torch.manual_seed(batch_seed(cfg.seed, 0, g))
        initial.train()
        out = initial(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        sums.append(out["loss_sum"].item())
        counts.append(batch["num_targets"])
    assert counts[0] != counts[1]  # the case where a mean of means would be wrong
    train(cfg, objective)
    logged = json.loads((tmp_path / "o" / "training_log.jsonl").read_text().splitlines()[0])
    assert logged["num_targets"] == sum(counts)
    assert logged["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-6)
    assert logged["loss"] != pytest.approx((sums[0] / counts[0] + sums[1] / counts[1]) / 2, rel=1e-6)


class _FakeAccelerator:
    """Just what MLMObjective reads from an Accelerator, for one rank of a 2-process job."""

    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes, self.is_main_process = rank, world, rank == 0

    def main_process_first(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("n_files", [1, 2])
def test_streaming_train_split_is_sharded_across_processes(tmp_path, n_files):
    """--streaming with 2 processes: each rank reads a disjoint part of the stream and together they read
    all of it (one file: split by example; two files: one file per rank)."""
    lines = [f"sentence number {i} about the quick brown fox" for i in range(40)]
    files = []
    for f in range(n_files):
        path = tmp_path / f"part{f}.txt"
        path.write_text("\n".join(lines[f::n_files]) + "\n")
        files.append(str(path))
    (tmp_path / "val.txt").write_text("a validation sentence\n")

    def rows(rank: int, world: int) -> list[tuple[int, ...]]:
        cfg = load_config([
            str(ROOT / "recipes/mlm/tiny-cpu.yaml"), *EXACT, "--train_file", str(tmp_path / "part*.txt"), "--validation_file", str(tmp_path / "val.txt"),
            "--output_dir", str(tmp_path / f"o{rank}{world}"), "--model_type", "bert", "--tokenizer_name", str(ROOT / "tests/fixtures/text/tokenizer"),
            "--streaming", "true", "--line_by_line", "true", "--max_seq_length", "32", "--max_steps", "1",
            "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,max_position_embeddings=64"])
        objective = MLMObjective(cfg, _FakeAccelerator(rank, world))
        assert not hasattr(objective.train_dataset, "__len__")  # really a stream
        return [tuple(int(t) for t in ex["input_ids"]) for ex in objective.train_dataset]

    everything = rows(0, 1)
    shard0, shard1 = rows(0, 2), rows(1, 2)
    assert len(everything) == len(lines) == len(set(everything))
    assert shard0 and shard1 and not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == sorted(everything)


def test_fresh_modernbert_config_special_ids_come_from_the_tokenizer(tmp_path):
    """A WordPiece tokenizer has no BOS/EOS: the config takes [CLS]/[SEP] for them instead of ModernBERT's
    defaults (50281, 50282), which lie outside an 8k vocabulary."""
    from transformers import AutoTokenizer

    from hfssl.objectives.text_base import text_model_config
    cfg = load_config([str(ROOT / "recipes/mlm/tiny-cpu.yaml"), *EXACT, "--train_file", str(CORPUS), "--output_dir", str(tmp_path / "o"),
                       "--tokenizer_name", str(ROOT / "tests/fixtures/text/tokenizer")])
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/text/tokenizer")
    assert tokenizer.bos_token_id is None and tokenizer.cls_token_id is not None
    config = text_model_config(cfg, tokenizer, 128)
    assert config.model_type == "modernbert"
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert (config.cls_token_id, config.sep_token_id, config.pad_token_id) == (
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    assert config.vocab_size == len(tokenizer)


def test_evaluation_without_targets_is_not_reported_as_a_perfect_score(tmp_path, caplog):
    """A one-line validation file can give no masked token: the loss was 0/max(0, 1) = 0.0 and the perplexity 1.0,
    a perfect score written into the model card. Now the loss is NaN, no metrics or perplexity, and a warning."""
    from accelerate import Accelerator

    from hfssl.evaluate import evaluate
    from test_schedules import _WithEvalSet
    from test_trainer_guards import _cfg

    class _NoTargets(_WithEvalSet):
        def collator(self, rows, seed, progress):
            return {**super().collator(rows, seed, progress), "num_targets": 0}

    result = evaluate(Accelerator(cpu=True), _NoTargets().model, _NoTargets(), _cfg(tmp_path))
    assert list(result) == ["eval_loss", "eval_targets"] and result["eval_targets"] == 0
    assert result["eval_loss"] != result["eval_loss"]  # NaN
    assert "The evaluation set gave no targets" in caplog.text and "larger validation set" in caplog.text
    assert MLMObjective.eval_summary(None, dict(result)).keys() == result.keys()  # no perplexity (was inf / 1.0)
    assert MLMObjective.eval_summary(None, {"eval_loss": 0.0})["eval_perplexity"] == 1.0


def test_an_explicit_max_position_embeddings_below_max_seq_length_is_raised_with_a_warning(tmp_path, caplog):
    """config_overrides max_position_embeddings=64 with max_seq_length 128 became 130 (RoBERTa) with nothing said."""
    from transformers import AutoTokenizer

    from hfssl.objectives.text_base import text_model_config
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/text/tokenizer")
    base = [str(ROOT / "recipes/mlm/tiny-cpu.yaml"), *EXACT, "--train_file", str(CORPUS), "--output_dir", str(tmp_path / "o"),
            "--tokenizer_name", str(ROOT / "tests/fixtures/text/tokenizer"), "--model_type", "roberta",
            "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"]
    config = text_model_config(load_config([*base[:-1], base[-1] + ",max_position_embeddings=64"]), tokenizer, 128)
    assert config.max_position_embeddings == 130
    assert ("config_overrides max_position_embeddings=64 is below what max_seq_length 128 needs: raised to 130" in caplog.text
            and "Set max_position_embeddings >= 130, or lower max_seq_length" in caplog.text)
    caplog.clear()
    text_model_config(load_config(base), tokenizer, 128)  # the architecture's default raised: nothing to say
    assert "max_position_embeddings" not in caplog.text
