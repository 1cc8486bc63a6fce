"""Typed configuration: the loop's settings (`TrainingArguments`) and how any config dataclass is loaded
from a flat YAML recipe plus command-line overrides.

Each objective's config (its folder's `config.py`) extends `TrainingArguments`. A recipe is a YAML mapping
whose keys are the fields; `--key value` on the command line overrides any of them. Every value is
converted to its field's type and checked before any work starts, and unknown keys fail loudly with the
closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from hfssl import hardware
from hfssl.errors import ConfigError

logger = logging.getLogger(__name__)


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
)
# Scheduler settings and the schedulers that read them: setting one for another scheduler is an error
# (it would be silently ignored).
SCHEDULER_SETTINGS = {
    "min_lr": ("cosine_with_min_lr", "warmup_stable_decay"),
    "num_decay_steps": ("warmup_stable_decay",),
    "num_cycles": ("cosine_with_restarts",),
    "plateau_factor": ("reduce_lr_on_plateau",),
    "plateau_patience": ("reduce_lr_on_plateau",),
}
# No AdamW run learns anything at a learning rate above this; larger values are typos (1e30, 3e4).
MAX_LEARNING_RATE = 1.0


@dataclass
class TrainingArguments:
    """Settings of the one training loop, shared by every objective and by fine-tuning."""

    output_dir: str = _help("Where checkpoints, logs and the final model are written.", "outputs/run")
    overwrite_output_dir: bool = _help("Start over in an output_dir that holds an earlier run: its files are moved aside to "
                                       "the sibling folder <output_dir>.overwritten-<time> (delete it when no longer needed).", False)
    seed: int = _help("Seed for initialization, data order, masks and dropout (0 to 2**32 - 1).", 42)
    max_steps: int = _help("Number of optimizer updates; -1 means num_train_epochs decides.", -1)
    num_train_epochs: float = _help("Epochs over the training set when max_steps is -1.", 1.0)
    per_device_train_batch_size: int = _help("Examples per process per micro-batch.", 8)
    per_device_eval_batch_size: int = _help("Examples per process per eval batch.", 8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer update.", 1)
    learning_rate: float = _help("Peak learning rate of AdamW.", 5e-5)
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", 0.0)
    adam_beta1: float = _help("AdamW beta1.", 0.9)
    adam_beta2: float = _help("AdamW beta2.", 0.999)
    adam_epsilon: float = _help("AdamW epsilon.", 1e-8)
    lr_scheduler_type: str = _help("A transformers scheduler name: " + ", ".join(SCHEDULERS) + ". reduce_lr_on_plateau "
                                   "steps on the eval loss at each evaluation (needs eval_steps).", "linear")
    warmup_steps: int = _help("Linear warmup updates.", 0)
    min_lr: Optional[float] = _help("cosine_with_min_lr (required): the learning rate the cosine ends at; warmup_stable_decay: "
                                    "the rate the decay ends at (default 0). Below learning_rate.", None)
    num_decay_steps: Optional[int] = _help("warmup_stable_decay (required): updates of the final decay; the stable phase "
                                           "lasts the rest after warmup.", None)
    num_cycles: Optional[int] = _help("cosine_with_restarts: number of hard restarts (default 1, which is plain cosine).", None)
    plateau_factor: Optional[float] = _help("reduce_lr_on_plateau: multiply the learning rate by this when the eval loss "
                                            "stops improving (default 0.1).", None)
    plateau_patience: Optional[int] = _help("reduce_lr_on_plateau: evaluations without improvement before lowering the "
                                            "learning rate (default 10).", None)
    max_grad_norm: float = _help("Gradient clipping norm; 0 disables clipping.", 1.0)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = _help(
        "Autocast precision. auto: bf16 where the device multiplies bf16 natively (CUDA from Ampere on; CPUs with AMX "
        "or AVX512-BF16), else no; decided at load and logged.", "no")
    torch_compile: bool = _help("Compile the model with torch.compile: true, false, or auto (compile where kernels can be "
                                "built: CUDA, or a CPU with a C++ compiler; decided at load and logged).", False)
    gradient_checkpointing: bool = _help("Trade compute for memory in the encoder.", False)
    logging_steps: int = _help("Send averaged metrics to the progress bar and trackers every N updates.", 10)
    eval_steps: int = _help("Evaluate every N updates; 0 evaluates only at the end.", 0)
    max_eval_batches: int = _help("Cap on eval batches per evaluation; 0 means the whole set.", 0)
    save_steps: int = _help("Write a resumable checkpoint every N updates; 0 disables.", 500)
    save_total_limit: Optional[int] = _help("Keep at most this many checkpoints (oldest removed).", None)
    resume_from_checkpoint: Optional[str] = _help("A checkpoint folder, or 'latest' for the newest one in output_dir that verifies "
                                                  "(an empty or missing output_dir starts from scratch).", None)
    on_no_good_checkpoint: Literal["error", "start_over"] = _help(
        "resume_from_checkpoint latest when output_dir holds checkpoints, a final model or files of something other than an "
        "hfssl run, but no checkpoint that verifies (an hfssl run that saved none yet starts again in place): "
        "error (exit 2, naming what is damaged) or start_over (move the earlier files aside, as overwrite_output_dir does, "
        "and train from step 0).", "error")
    max_bad_steps: int = _help("Stop after this many updates in a row with a non-finite loss or gradient.", 3)
    max_rollbacks: int = _help("Most rollbacks to an earlier checkpoint an objective may ask for (e.g. wav2vec2 on_collapse=rollback).", 3)
    dataloader_num_workers: int = _help("DataLoader worker processes.", 0)
    report_to: str = _help("Comma-separated Accelerate trackers (tensorboard, wandb, ...) or 'none'.", "none")
    push_to_hub: bool = _help("Upload output_dir to the Hub at the end.", False)
    hub_model_id: Optional[str] = _help("Repository id for push_to_hub (defaults to output_dir's name).", None)

    def __post_init__(self) -> None:
        self._resolve_auto()
        _check_types(self)
        positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}.")
        if not 0 < self.learning_rate <= MAX_LEARNING_RATE:
            raise ConfigError(f"learning_rate must be in (0, {MAX_LEARNING_RATE:g}], got {self.learning_rate}.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32 - 1], got {self.seed}.")
        if not 0 <= self.weight_decay <= 1:
            raise ConfigError(f"weight_decay must be in [0, 1], got {self.weight_decay}.")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1} and {self.adam_beta2}.")
        if not 0 < self.adam_epsilon < 1:
            raise ConfigError(f"adam_epsilon must be in (0, 1), got {self.adam_epsilon}.")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}.")
        _check_local_sources(self)
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ConfigError("overwrite_output_dir moves the earlier run aside and starts over, resume_from_checkpoint "
                              "continues it: choose one.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps must be -1 (use num_train_epochs) or >= 1, got {self.max_steps}.")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs must be > 0 when max_steps is -1.")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ConfigError(f"lr_scheduler_type '{self.lr_scheduler_type}' is unknown; choose one of: {', '.join(SCHEDULERS)}.")
        self._check_scheduler_settings()
        for key in ("eval_steps", "save_steps", "warmup_steps", "max_eval_batches", "dataloader_num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError("save_total_limit must be >= 1 or unset.")

    def _resolve_auto(self) -> None:
        """Replace `auto` in mixed_precision and torch_compile by what this machine runs fast, so everything
        downstream, and the saved hfssl_config.yaml, sees a concrete value. The choices and their reasons are
        kept in `auto_choices` (not a setting) and logged when the run starts (`make_accelerator`)."""
        self.auto_choices: list[str] = []
        if self.mixed_precision == "auto":
            ok, why = hardware.native_bf16()
            self.mixed_precision = "bf16" if ok else "no"
            self.auto_choices.append(f"mixed_precision auto -> {self.mixed_precision}: {why}.")
        if isinstance(self.torch_compile, str) and self.torch_compile.lower() == "auto":
            self.torch_compile, why = hardware.can_compile()
            self.auto_choices.append(f"torch_compile auto -> {str(self.torch_compile).lower()}: {why}.")

    def _check_scheduler_settings(self) -> None:
        kind = self.lr_scheduler_type
        for key, users in SCHEDULER_SETTINGS.items():
            if getattr(self, key) is not None and kind not in users:
                raise ConfigError(f"{key} is a setting of {' and '.join(users)}, not of lr_scheduler_type {kind}: unset it "
                                  f"(--{key} none) or choose one of those schedulers.")
        if kind == "cosine_with_min_lr" and self.min_lr is None:
            raise ConfigError("lr_scheduler_type cosine_with_min_lr needs min_lr, the learning rate it ends at (e.g. --min_lr 1e-5).")
        if self.min_lr is not None and not 0 <= self.min_lr < self.learning_rate:
            raise ConfigError(f"min_lr must be in [0, learning_rate={self.learning_rate}), got {self.min_lr}.")
        if kind == "warmup_stable_decay" and self.num_decay_steps is None:
            raise ConfigError("lr_scheduler_type warmup_stable_decay needs num_decay_steps, the updates of its final decay "
                              "(e.g. 10% of max_steps).")
        if self.num_decay_steps is not None and self.num_decay_steps < 1:
            raise ConfigError(f"num_decay_steps must be >= 1, got {self.num_decay_steps}.")
        if kind == "warmup_stable_decay" and self.max_steps > 0 and self.warmup_steps + self.num_decay_steps > self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) + num_decay_steps ({self.num_decay_steps}) exceed "
                              f"max_steps ({self.max_steps}): nothing is left for the stable phase.")
        if self.num_cycles is not None and self.num_cycles < 1:
            raise ConfigError(f"num_cycles must be >= 1, got {self.num_cycles}.")
        if self.plateau_factor is not None and not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}.")
        if self.plateau_patience is not None and self.plateau_patience < 0:
            raise ConfigError(f"plateau_patience must be >= 0, got {self.plateau_patience}.")
        if kind == "constant" and self.warmup_steps:
            raise ConfigError(f"lr_scheduler_type constant has no warmup (warmup_steps {self.warmup_steps} would be ignored): "
                              "use constant_with_warmup, or set warmup_steps 0.")
        if kind == "reduce_lr_on_plateau":
            if not self.eval_steps:
                raise ConfigError("lr_scheduler_type reduce_lr_on_plateau lowers the learning rate when the eval loss stops "
                                  "improving, so it needs evaluations during training: set eval_steps (e.g. 500).")
            if self.warmup_steps:
                raise ConfigError("reduce_lr_on_plateau has no warmup: set warmup_steps 0 or choose another scheduler.")

    @property
    def trackers(self) -> list[str]:
        names = [n.strip() for n in self.report_to.split(",") if n.strip()]
        return [] if names in ([], ["none"]) else names




# ----------------------------------------------------------------------------------- type checks

# Settings that name a model, config or tokenizer: a local folder or a Hub repository id.
SOURCE_KEYS = ("model_name_or_path", "config_name", "tokenizer_name", "label_model")


def _check_local_sources(cfg: Any) -> None:
    """A source that can only be a local path (absolute, or starting with . or ~: a Hub id is `name` or `org/name`)
    and does not exist is a typo: say so now, not as transformers' "Repo id must be in the form ..." traceback."""
    for key in SOURCE_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, str) and (os.path.isabs(value) or value.startswith((".", "~"))):
            if not os.path.exists(os.path.expanduser(value)):
                raise ConfigError(f"{key}: '{value}' does not exist (a local folder; a Hub model is named like 'org/name').")


def _check_types(cfg: Any) -> None:
    """Convert each field to its annotated type; raise ConfigError naming the key on failure."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, convert_value(f.name, getattr(cfg, f.name), hints[f.name]))


def convert_value(key: str, value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return convert_value(key, value, inner)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads unquoted no/yes/off/on as booleans
            value = next((a for a in args if isinstance(a, str) and a.lower() in _BOOL_WORDS[value]), value)
        if value not in args:
            raise ConfigError(f"{key}: '{value}' is not allowed; choose one of: {', '.join(map(str, args))}.")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}: expected true or false, got '{value}'.")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value}.")
        try:
            number = float(value) if tp is float else int(float(value)) if _is_integral(value) else None
        except (TypeError, ValueError, OverflowError):  # OverflowError: int('inf')
            number = None
        if number is not None and not math.isfinite(number):  # nan and inf never make sense as a setting
            number = None
        if number is None:
            raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a finite number'}, got '{value}'.")
        return number
    if tp is dict:
        if isinstance(value, dict):
            return value
        if isinstance(value, str):  # CLI form: "a=1,b=x"
            out = {}
            for item in filter(None, (s.strip() for s in value.split(","))):
                if "=" not in item:
                    raise ConfigError(f"{key}: expected 'name=value,...', got '{item}'.")
                k, v = item.split("=", 1)
                out[k.strip()] = _scalar(v)
            return out
        raise ConfigError(f"{key}: expected a mapping, got '{value}'.")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}.")
        return str(value)
    return value


def _scalar(text: str) -> Any:
    """A CLI value as YAML reads it, except that '1e-5' is a number (YAML 1.1 wants '1.0e-5')."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


_BOOL_WORDS = {True: ("yes", "true", "on"), False: ("no", "false", "off")}


def _is_integral(value: Any) -> bool:
    f = float(value)
    return f == int(f)


# ----------------------------------------------------------------------------------- loading

# Keys that together say where the data comes from, and where the model comes from. Setting any key of
# a group on the command line replaces the recipe's whole group: a recipe's example data or model
# must not survive next to the user's own (its test_file beside their train_file, its
# model_name_or_path beside their config_name).
SOURCE_GROUPS = {
    "data source": ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file",
                    "train_dir", "validation_dir", "test_dir"),
    "model source": ("model_name_or_path", "config_name", "init_from_label_model"),
}


def load_config(argv: list[str], configs: dict[str, type], default_objective: str = "mlm") -> TrainingArguments:
    """Build a config from `[RECIPE.yaml] [--key value ...]`.

    The recipe's `objective` key (or `--objective`) picks the config class; CLI values override
    the recipe, and a CLI value for a key of a `SOURCE_GROUPS` group drops the recipe's other keys
    of that group (`--key none` unsets that one key only); `--config_overrides a=1` is merged over the
    recipe's `config_overrides` key by key (`--config_overrides ""` or `none` clears them; with another
    `--model_type` the command line's replace them). Raises ConfigError on unknown keys or bad values,
    before any work.
    """
    argv = list(argv)
    recipe: dict[str, Any] = {}
    source = "the command line"
    if argv and not argv[0].startswith("--"):
        path = argv.pop(0)
        recipe, source = read_recipe(path), path
    overrides = parse_cli(argv)
    objective = overrides.get("objective", recipe.get("objective", default_objective))
    if objective not in configs:
        raise ConfigError(f"objective '{objective}' is unknown; choose one of: {', '.join(configs)}.")
    cls = configs[objective]
    names = [f.name for f in dataclasses.fields(cls)]
    for where, values in ((source, recipe), ("the command line", overrides)):
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"Unknown key '{key}' in {where} for objective '{objective}'.{hint} Run with --help for the list.")
    cli_model = overrides.get("config_overrides")
    same_architecture = overrides.get("model_type", recipe.get("model_type")) == recipe.get("model_type")
    if isinstance(recipe.get("config_overrides"), dict) and isinstance(cli_model, str) and same_architecture:
        # One model size changed on the command line keeps the recipe's other sizes (num_attention_heads must
        # still divide hidden_size): merged key by key, the command line winning. "" or none clears them all
        # (continued pretraining of a checkpoint takes its own config). Another --model_type replaces them:
        # the recipe's keys were written for its own architecture.
        cleared = cli_model.strip().lower() in ("", "none", "null")
        overrides["config_overrides"] = {} if cleared else {**recipe["config_overrides"], **convert_value("config_overrides", cli_model, dict)}
    launched = hardware.launcher_precision(recipe, overrides, source) if "mixed_precision" in names else None
    if launched:
        overrides["mixed_precision"] = launched
    cfg = cls(**{**_without_replaced_groups(recipe, overrides), **overrides})
    if launched:
        cfg.auto_choices.append(f"mixed_precision {launched}: asked for by accelerate launch (ACCELERATE_MIXED_PRECISION).")
    return cfg


def _without_replaced_groups(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The recipe without the groups the command line gives a value of its own (`--key none` only unsets that key)."""
    given = {k for k, v in overrides.items() if not (isinstance(v, str) and v.lower() in ("none", "null"))}
    dropped = []
    for what, keys in SOURCE_GROUPS.items():
        mine = [key for key in keys if key in recipe and key not in overrides] if given.intersection(keys) else []
        if mine:
            logger.warning("The command line sets the %s, so the recipe's %s %s not used.", what, ", ".join(mine),
                           "is" if len(mine) == 1 else "are")
        dropped += mine
    return {k: v for k, v in recipe.items() if k not in dropped}


def read_recipe(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Recipe '{path}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Recipe '{path}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe '{path}' must be a mapping of key: value, got {type(data).__name__}.")
    return data


def parse_cli(argv: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, and bare `--flag` (true) into a dict of strings."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"Unexpected argument '{arg}': options look like --key value.")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        else:
            value = "true"
        out[key] = value
        i += 1
    return out


def config_help(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    groups = "; ".join(f"{what}: {', '.join(k for k in keys if k in names)}" for what, keys in SOURCE_GROUPS.items()
                       if any(k in names for k in keys))
    lines = [f"{cls.__name__}: {cls.__doc__.strip()}",
             f"  Setting one key of a group on the command line replaces all of the recipe's keys of that group ({groups}); "
             f"unset a single key with --key none.", ""]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        lines.append(f"  --{f.name} ({tp}, default {default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_or_exit(argv: list[str], configs: dict[str, type], default_objective: str = "mlm") -> TrainingArguments:
    """Entry-script helper: --help prints every field; errors print one clear line and exit 2."""
    if "--help" in argv or "-h" in argv:
        for cls in configs.values():
            print(config_help(cls) + "\n")
        sys.exit(0)
    try:
        return load_config(argv, configs, default_objective)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
