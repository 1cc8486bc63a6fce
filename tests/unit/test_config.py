"""Tests for hfssl.config: YAML recipes + CLI overrides, type conversion, errors, round trip, recipes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from hfssl.errors import ConfigError
from hfssl import config as hfconfig
from hfssl.config import parse_cli, save_config, to_dict
from hfssl.objectives import config_classes, load_config
from hfssl.objectives.mlm.config import MLMConfig

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("one document\nanother document\n")
    return path


def test_recipe_plus_overrides_with_type_conversion(tmp_path):
    recipe = _recipe(tmp_path, """
objective: mlm
learning_rate: 1e-4          # YAML 1.1 reads this as a string
max_steps: 300
per_device_train_batch_size: 32
save_total_limit: 2
push_to_hub: false
mask_strategy: whole_word
config_overrides:
  hidden_size: 256
""")
    cfg = load_config([recipe, "--max_steps", "50", "--push_to_hub", "true", "--save_total_limit", "none",
                       "--config_overrides", "hidden_size=64,num_hidden_layers=2", "--weight_decay=0.01",
                       "--gradient_checkpointing"])
    assert isinstance(cfg, MLMConfig)
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    assert cfg.max_steps == 50 and isinstance(cfg.max_steps, int)  # override wins
    assert cfg.per_device_train_batch_size == 32  # from the recipe
    assert cfg.push_to_hub is True
    assert cfg.save_total_limit is None
    assert cfg.config_overrides == {"hidden_size": 64, "num_hidden_layers": 2}
    assert all(type(v) is int for v in cfg.config_overrides.values())
    assert cfg.weight_decay == 0.01
    assert cfg.gradient_checkpointing is True  # bare flag
    assert cfg.mask_strategy == "whole_word"
    assert cfg.mlm_probability == 0.15  # default untouched


@pytest.mark.parametrize("text, expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                            ("false", False), ("0", False), ("no", False)])
def test_bool_strings(text, expected):
    assert load_config(["--push_to_hub", text]).push_to_hub is expected


def test_string_numbers_convert():
    cfg = load_config(["--learning_rate", "3e-4", "--max_steps", "1e3", "--num_train_epochs", "2",
                       "--max_train_samples", "100"])
    assert cfg.learning_rate == pytest.approx(3e-4) and type(cfg.learning_rate) is float
    assert cfg.max_steps == 1000 and type(cfg.max_steps) is int
    assert cfg.num_train_epochs == 2.0 and type(cfg.num_train_epochs) is float
    assert cfg.max_train_samples == 100 and type(cfg.max_train_samples) is int


def test_yaml_no_for_mixed_precision(tmp_path):
    # YAML 1.1 reads an unquoted `no` as false; the Literal field must still accept it.
    cfg = load_config([_recipe(tmp_path, "mixed_precision: no\n")])
    assert cfg.mixed_precision == "no"
    assert load_config(["--mixed_precision", "bf16"]).mixed_precision == "bf16"


def test_unknown_key_in_recipe_names_it_and_suggests_close_match(tmp_path):
    recipe = _recipe(tmp_path, "objective: mlm\nleraning_rate: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config([recipe])
    msg = str(err.value)
    assert "'leraning_rate'" in msg and "'learning_rate'" in msg and "recipe.yaml" in msg


def test_unknown_key_on_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"'mlm_probabilty'.*'mlm_probability'"):
        load_config(["--mlm_probabilty", "0.2"])
    with pytest.raises(ConfigError, match="'zzzzqqqq'") as err:
        load_config(["--zzzzqqqq", "1"])
    assert "Did you mean" not in str(err.value)  # nothing close: no made-up suggestion


def test_invalid_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(["--mask_strategy", "words"])
    msg = str(err.value)
    assert "mask_strategy" in msg and "'words'" in msg
    for allowed in ("token", "whole_word", "span"):
        assert allowed in msg
    with pytest.raises(ConfigError, match="no, fp16, bf16"):
        load_config(["--mixed_precision", "fp8"])


@pytest.mark.parametrize("key, value", [("max_steps", "1.5"), ("per_device_train_batch_size", "eight"),
                                        ("max_steps", "inf"), ("max_steps", "nan"), ("save_total_limit", "2.5")])
def test_int_field_rejects_non_integers(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config([f"--{key}", value])


@pytest.mark.parametrize("key, value", [("learning_rate", "fast"), ("learning_rate", "nan"), ("push_to_hub", "maybe")])
def test_bad_values_fail_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config([f"--{key}", value])


def test_model_name_and_config_name_together_fail():
    with pytest.raises(ConfigError, match="model_name_or_path and config_name"):
        load_config(["--model_name_or_path", "bert-base-uncased", "--config_name", "bert-base-uncased"])


def test_missing_or_empty_train_file_fails_naming_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as err:
        load_config(["--train_file", str(missing)])
    assert "train_file" in str(err.value) and str(missing) in str(err.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(["--train_file", str(empty)])
    assert "train_file" in str(err.value) and str(empty) in str(err.value) and "empty" in str(err.value)
    with pytest.raises(ConfigError, match="validation_file"):
        load_config(["--validation_file", str(missing)])
    wrong = tmp_path / "corpus.docx"
    wrong.write_text("x")
    with pytest.raises(ConfigError, match=r"train_file.*\.docx"):
        load_config(["--train_file", str(wrong)])


def test_value_checks():
    with pytest.raises(ConfigError, match="mlm_probability"):
        load_config(["--mlm_probability", "1.5"])
    with pytest.raises(ConfigError, match="mask_replace_prob"):
        load_config(["--mask_replace_prob", "0.8", "--random_replace_prob", "0.3"])
    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        load_config(["--lr_scheduler_type", "cosine_annealing"])
    with pytest.raises(ConfigError, match="objective 'bogus'"):
        load_config(["--objective", "bogus"])
    with pytest.raises(ConfigError, match="Unexpected argument"):
        load_config(["--max_steps", "5", "stray"])


def test_recipe_must_exist_and_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="mapping"):
        load_config([_recipe(tmp_path, "- a\n- b\n")])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([_recipe(tmp_path, "a: [1, 2\n")])


def test_parse_cli_forms():
    assert parse_cli(["--a", "1", "--b=x=y", "--flag", "--c", "-5"]) == {"a": "1", "b": "x=y", "flag": "true", "c": "-5"}


def test_save_config_round_trips(tmp_path, corpus):
    cfg = load_config(["--train_file", str(corpus), "--learning_rate", "2e-4", "--mask_strategy", "span",
                       "--config_overrides", "hidden_size=64,num_hidden_layers=2", "--save_total_limit", "3",
                       "--mlm_probability_final", "0.3", "--mixed_precision", "no", "--report_to", "tensorboard"])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text())["objective"] == "mlm"
    again = load_config([str(path)])
    assert type(again) is type(cfg)
    assert to_dict(again) == to_dict(cfg)
    assert again.mixed_precision == "no" and again.save_total_limit == 3 and again.tokenizer_name is None


def test_every_field_has_help_and_a_default():
    for cls in config_classes().values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    a, b = MLMConfig(), MLMConfig()
    a.config_overrides["x"] = 1
    assert b.config_overrides == {}  # no shared mutable default


# ------------------------------------------------------------------------------- recipes

def _recipes() -> list[Path]:
    return sorted(p for p in (REPO / "recipes").glob("**/*.yaml")
                  if "accelerate" not in p.relative_to(REPO / "recipes").parts[:1])


def test_recipes_exist():
    assert _recipes(), "no YAML recipes found under recipes/"


@pytest.mark.parametrize("recipe", _recipes(), ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_loads(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name files relative to the repository root
    raw = yaml.safe_load(recipe.read_text())
    assert isinstance(raw, dict), f"{recipe} is not a mapping"
    objective = raw.get("objective", "mlm")
    from hfssl.finetune.config import FinetuneConfig

    known = {**config_classes(), "finetune": FinetuneConfig}  # run_pretrain.py's objectives + run_finetune.py's
    # Not a skip: a recipe for an objective that hfssl does not know yet is a bug to fix.
    assert objective in known, f"{recipe}: objective '{objective}' is unknown (known: {', '.join(known)})"
    cfg = hfconfig.load_config([str(recipe.relative_to(REPO))], configs=known)
    assert type(cfg) is known[objective]
    for key, value in raw.items():  # every recipe value made it into the config
        got = getattr(cfg, key)
        if value == "auto" and key in ("mixed_precision", "torch_compile"):  # resolved at load for this machine
            assert any(choice.startswith(f"{key} auto -> {str(got).lower()}: ") for choice in cfg.auto_choices), key
        elif isinstance(value, float) or isinstance(got, float):
            assert math.isclose(float(got), float(value)), key
        elif isinstance(value, bool):  # `no` in YAML is false: allowed for a yes/no Literal
            assert got == value or got == ("yes" if value else "no"), key
        elif isinstance(value, dict) or value is None:
            assert got == value, key
        else:
            assert str(got) == str(value) or got == value, key


def test_train_file_glob_is_expanded_and_every_shard_checked(tmp_path):
    from hfssl.data.files import resolve_data_files

    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("b.txt", "a.txt", "c.txt"):
        (shards / name).write_text(f"document in {name}\n")
    pattern = str(shards / "*.txt")
    assert resolve_data_files("train_file", pattern, (".txt",)) == [str(shards / n) for n in ("a.txt", "b.txt", "c.txt")]
    assert load_config(["--train_file", pattern]).train_file == pattern
    with pytest.raises(ConfigError, match=r"train_file: the pattern '.*\*\.json' matches no file"):
        load_config(["--train_file", str(shards / "*.json")])
    (shards / "d.txt").write_text("")
    with pytest.raises(ConfigError, match=r"train_file: file '.*d\.txt' is empty"):
        load_config(["--train_file", pattern])
    (shards / "d.txt").unlink()
    (shards / "e.csv").write_text("text\nx\n")
    with pytest.raises(ConfigError, match="several formats"):
        load_config(["--train_file", str(shards / "*")])
    with pytest.raises(ConfigError, match=r"one format \(extension\); found \.csv \(validation_file .*e\.csv\); \.txt \(train_file "):
        load_config(["--train_file", pattern, "--validation_file", str(shards / "e.csv")])


def test_streaming_audio_refuses_duration_batches(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    with pytest.raises(ConfigError, match="max_batch_seconds needs every file's duration"):
        load_config(["--objective", "wav2vec2", "--train_dir", str(tmp_path), "--streaming", "true", "--max_steps", "5",
                     "--max_batch_seconds", "60"])


# ----------------------------------------------------------------------------------- values that ruin a run

@pytest.mark.parametrize("args, key", [
    (["--learning_rate", "inf"], "learning_rate"), (["--learning_rate", "1e30"], "learning_rate"),
    (["--learning_rate", "-inf"], "learning_rate"), (["--num_train_epochs", "inf"], "num_train_epochs"),
    (["--seed", "-1"], "seed"), (["--seed", str(2**32)], "seed"), (["--weight_decay", "1e9"], "weight_decay"),
    (["--adam_beta2", "1"], "adam_beta2"), (["--adam_epsilon", "0"], "adam_epsilon"), (["--max_grad_norm", "-1"], "max_grad_norm"),
])
def test_non_finite_and_absurd_values_are_rejected_at_load(args, key):
    with pytest.raises(ConfigError, match=key):
        load_config(args)


def test_overwrite_and_resume_together_are_refused():
    with pytest.raises(ConfigError, match="overwrite_output_dir .* resume_from_checkpoint"):
        load_config(["--overwrite_output_dir", "true", "--resume_from_checkpoint", "latest"])


# ----------------------------------------------------------------------------------- source groups of a recipe

FINETUNE_TINY = REPO / "recipes" / "finetune" / "text-classification-tiny-cpu.yaml"


def _finetune(args, monkeypatch):
    from hfssl.finetune.config import FinetuneConfig

    monkeypatch.chdir(REPO)
    return hfconfig.load_config([str(FINETUNE_TINY.relative_to(REPO)), *args], configs={"finetune": FinetuneConfig}, default_objective="finetune")


def test_own_data_on_the_command_line_replaces_the_recipe_data(tmp_path, monkeypatch, caplog):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,x\nb,y\n")
    recipe = yaml.safe_load(FINETUNE_TINY.read_text())
    cfg = _finetune(["--train_file", str(train)], monkeypatch)
    assert cfg.train_file == str(train) and cfg.validation_file is None and cfg.test_file is None  # not the fixtures'
    assert "validation_file, test_file are not used" in caplog.text
    assert cfg.model_name_or_path == recipe["model_name_or_path"]  # another group: kept


def test_own_model_source_on_the_command_line_replaces_the_recipe_model(tmp_path, monkeypatch):
    # A scratch baseline: config_name alone, without "Can't provide both model_name_or_path and config_name".
    cfg = _finetune(["--config_name", "some/config"], monkeypatch)
    assert cfg.config_name == "some/config" and cfg.model_name_or_path is None
    assert cfg.test_file.endswith("test.csv")  # the data group is untouched
    recipe = yaml.safe_load(FINETUNE_TINY.read_text())
    cfg = _finetune(["--test_file", "none"], monkeypatch)  # unsets that key only
    assert cfg.test_file is None and cfg.train_file == recipe["train_file"] and cfg.validation_file == recipe["validation_file"]


def test_readmes_learning_rate_grid_applies_to_both_sides(monkeypatch):
    """README's payoff command gives --learning_rates with the tiny recipe: random init must get the same grid (the
    recipe once set a scratch_learning_rate, which left random init a one-point grid beside it)."""
    cfg = _finetune(["--compare_with_scratch", "true", "--learning_rates", "1e-4,3e-4,1e-3"], monkeypatch)
    assert cfg.pretrained_learning_rates == cfg.scratch_learning_rate_grid == [1e-4, 3e-4, 1e-3]
    one = _finetune(["--compare_with_scratch", "true"], monkeypatch)  # the recipe's single rate, on both sides
    assert one.pretrained_learning_rates == one.scratch_learning_rate_grid == [1e-3]


def test_a_missing_local_model_or_tokenizer_folder_is_named_at_load(tmp_path, corpus):
    """A path that can only be local and does not exist: the key and the path, not transformers' repo-id traceback."""
    from hfssl.data.text.tokenizer import load_or_train_tokenizer

    for key in ("tokenizer_name", "model_name_or_path", "config_name"):
        with pytest.raises(ConfigError, match=rf"^{key}: '{tmp_path}/nope' does not exist \(a local folder"):
            load_config(["--train_file", str(corpus), f"--{key}", str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match=r"tokenizer_name: '\./nope' does not exist"):
        load_config(["--train_file", str(corpus), "--tokenizer_name", "./nope"])
    assert load_config(["--train_file", str(corpus), "--model_name_or_path", "org/name"]).model_name_or_path == "org/name"
    empty = tmp_path / "empty"  # a folder without tokenizer files
    empty.mkdir()
    cfg = load_config(["--train_file", str(corpus), "--tokenizer_name", str(empty)])
    with pytest.raises(ConfigError, match=rf"tokenizer_name: could not load a tokenizer from '{empty}'"):
        load_or_train_tokenizer(cfg, None)


def test_help_says_how_groups_and_unsetting_work():
    from hfssl.config import config_help

    text = config_help(MLMConfig)
    assert "replaces all of the recipe's keys of that group" in text and "--key none" in text
    assert "data source: dataset_name, dataset_config_name, train_file, validation_file;" in text


def test_config_overrides_on_the_command_line_read_exponents_as_numbers():
    # YAML 1.1 reads "1e-5" as a string, which transformers' configs then reject.
    cfg = load_config(["--config_overrides", "layer_norm_eps=1e-5,hidden_act=gelu,num_hidden_layers=2,use_cache=false"])
    assert cfg.config_overrides == {"layer_norm_eps": 1e-5, "hidden_act": "gelu", "num_hidden_layers": 2, "use_cache": False}
    assert type(cfg.config_overrides["layer_norm_eps"]) is float and type(cfg.config_overrides["num_hidden_layers"]) is int


def test_config_overrides_on_the_command_line_merge_over_the_recipes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: mlm\nconfig_overrides:\n  hidden_size: 256\n  num_attention_heads: 4\n  num_hidden_layers: 4\n")
    cfg = load_config([str(recipe), "--config_overrides", "hidden_size=128,intermediate_size=512"])
    # the recipe's heads and layers stay: the command line changes only the keys it names
    assert cfg.config_overrides == {"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 4, "intermediate_size": 512}
    for cleared in ("", "none"):  # continued pretraining: the checkpoint's own config, none of the recipe's sizes
        assert load_config([str(recipe), "--config_overrides", cleared]).config_overrides == {}
    # another architecture: the recipe's keys were written for its own one
    other = load_config([str(recipe), "--model_type", "roberta", "--config_overrides", "hidden_size=64"])
    assert other.config_overrides == {"hidden_size": 64}


@pytest.mark.parametrize("bf16, compiler, precision, compiled", [
    ((True, "this CPU multiplies bf16 natively (AMX)"), (True, "CPU kernels built with /usr/bin/g++"), "bf16", True),
    ((False, "this CPU has neither AMX nor AVX512-BF16"), (False, "no C++ compiler for CPU kernels"), "no", False),
])
def test_auto_precision_and_compile_resolve_to_what_the_machine_runs_fast(bf16, compiler, precision, compiled, corpus,
                                                                          tmp_path, monkeypatch):
    """`auto` becomes a concrete value at load (what is saved and what the loop reads), with its reason kept for the log."""
    from hfssl import hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda: bf16)
    monkeypatch.setattr(hardware, "can_compile", lambda: compiler)
    cfg = load_config(["--train_file", str(corpus), "--mixed_precision", "auto", "--torch_compile", "auto"])
    assert (cfg.mixed_precision, cfg.torch_compile) == (precision, compiled)
    assert cfg.auto_choices == [f"mixed_precision auto -> {precision}: {bf16[1]}.",
                                f"torch_compile auto -> {str(compiled).lower()}: {compiler[1]}."]
    save_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert (saved["mixed_precision"], saved["torch_compile"]) == (precision, compiled)
    explicit = load_config(["--train_file", str(corpus), "--mixed_precision", "bf16", "--torch_compile", "false"])
    assert (explicit.mixed_precision, explicit.torch_compile, explicit.auto_choices) == ("bf16", False, [])
    with pytest.raises(ConfigError, match="torch_compile: expected true or false"):
        load_config(["--train_file", str(corpus), "--torch_compile", "sometimes"])


def test_accelerate_launch_precision_is_taken_where_hfssl_leaves_it_open(corpus, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision X` reaches the script only as ACCELERATE_MIXED_PRECISION, which an
    Accelerator built with an explicit precision ignores: unset or `auto` take it, a different explicit value is
    refused, and accelerate's `no` (also its value when asked for nothing) decides nothing."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_config(["--train_file", str(corpus)])
    assert cfg.mixed_precision == "bf16"
    assert "mixed_precision bf16: asked for by accelerate launch (ACCELERATE_MIXED_PRECISION)." in cfg.auto_choices
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    recipe = _recipe(tmp_path, f"objective: mlm\ntrain_file: {corpus}\nmixed_precision: auto\n")
    assert load_config([recipe]).mixed_precision == "fp16"
    same = load_config(["--train_file", str(corpus), "--mixed_precision", "fp16"])
    assert (same.mixed_precision, same.auto_choices) == ("fp16", [])
    fp32 = _recipe(tmp_path, f"objective: mlm\ntrain_file: {corpus}\nmixed_precision: no\n")  # YAML: false
    with pytest.raises(ConfigError, match=r"mixed_precision: .*recipe\.yaml sets no, but accelerate launch asks for fp16"):
        load_config([fp32])
    with pytest.raises(ConfigError, match="the command line sets bf16"):
        load_config(["--train_file", str(corpus), "--mixed_precision", "bf16"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert load_config(["--train_file", str(corpus), "--mixed_precision", "bf16"]).mixed_precision == "bf16"
    assert load_config(["--train_file", str(corpus)]).mixed_precision == "no"


def test_hardware_probe_matches_the_compiler_on_the_path(monkeypatch, tmp_path):
    from hfssl import hardware

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert hardware.cpp_compiler() is None
    compiler = tmp_path / "my-g++"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    assert hardware.cpp_compiler() == str(compiler)
    if not (hardware.torch.cuda.is_available() or hardware.torch.backends.mps.is_available()):
        assert hardware.can_compile() == (True, f"CPU kernels built with {compiler}")
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
        assert hardware.can_compile()[0] is False
