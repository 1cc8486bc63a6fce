"""The paper recipes as documented for corpus-scale data: streamed from gzip shards, with the tokenizer
trained from the stream. (A streamed run resumed from its saved shard: test_pretrain_mlm.py.)"""

import gzip
import json

import pytest
from transformers import AutoTokenizer, pipeline

from conftest import CORPUS, ROOT, run_cli, train_losses

TINY = ["--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--vocab_size", "400", "--tokenizer_train_samples", "300", "--max_seq_length", "32",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--warmup_steps", "1", "--logging_steps", "1", "--eval_steps", "0", "--save_steps", "0", "--max_eval_batches", "1",
        "--mixed_precision", "no", "--torch_compile", "false"]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The fixture corpus as 4 gzip training shards and 1 validation shard."""
    folder = tmp_path_factory.mktemp("shards")
    lines = CORPUS.read_text().splitlines(keepends=True)
    for s in range(4):
        with gzip.open(folder / f"train-{s}.txt.gz", "wt") as f:
            f.writelines(lines[s * 130 : (s + 1) * 130])
    with gzip.open(folder / "valid.txt.gz", "wt") as f:
        f.writelines(lines[520:])
    return folder


@pytest.mark.parametrize("recipe", ["bert-base", "roberta-base", "modernbert-base-30"])
def test_paper_recipe_streams_gzip_shards_and_trains_its_tokenizer_from_the_stream(recipe, shards, tmp_path):
    out = tmp_path / recipe
    proc = run_cli("run_pretrain.py", [ROOT / "recipes" / "mlm" / f"{recipe}.yaml", "--train_file", shards / "train-*.txt.gz",
                                       "--validation_file", shards / "valid.txt.gz", "--streaming", "true", *TINY,
                                       "--max_steps", "3", "--output_dir", out], env=ENV)
    assert "Trained the tokenizer on 300 documents" in proc.stderr
    assert sorted(train_losses(out)) == [1, 2, 3]
    assert json.loads((out / "train_results.json").read_text())["eval_loss"] > 0
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.mask_token == "[MASK]") == (recipe == "bert-base")  # WordPiece for BERT, byte-level BPE otherwise
    fill = pipeline("fill-mask", model=str(out))
    predictions = fill(f"Return the {tok.mask_token} of the file.", top_k=3)
    assert len(predictions) == 3 and all(p["token_str"] for p in predictions)
    assert "| Training data | train: streamed from 4 shard(s)" in (out / "README.md").read_text()

