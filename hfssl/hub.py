"""Model cards and Hub uploads for hfssl outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import yaml

from hfssl.errors import ConfigError

logger = logging.getLogger(__name__)

# Never uploaded: resumable checkpoints (optimizer state, RNG), unfinished saves, the run's lock and
# id, and its working copy of the tokenizer (the same files sit at the top level) are for running
# and resuming, not for using the model.
UPLOAD_IGNORE = ("checkpoint-*", "abandoned-checkpoint-*", ".tmp-*", "*.tmp", ".hfssl.lock", "hfssl_run.json", "runs", "runs/*", "tokenizer", "tokenizer/*")


def write_model_card(output_dir: str, objective: str, pipeline_tag: Optional[str], summary: dict, details: dict[str, str],
                     datasets: Optional[list[str]] = None, config: Any = None, model_index: Optional[list] = None,
                     tags: Optional[list[str]] = None) -> Path:
    """README.md with Hub metadata (library, pipeline tag, datasets, model-index) and a plain summary.
    pipeline_tag None: the folder is not a transformers model (a probe), so the card claims neither."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": pipeline_tag} if pipeline_tag else {}
    meta["tags"] = ["hfssl", *(tags or [])]
    if datasets:
        meta["datasets"] = datasets
    if model_index:
        meta["model-index"] = model_index
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {Path(output_dir).resolve().name}", "",
             f"Trained with hfssl — objective: **{objective}**.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in details.items()]
    metrics = {k: v for k, v in summary.items() if k.startswith("eval_")}
    if metrics:
        lines += ["", "## Final evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", f"Updates: {summary.get('steps', 0)}."]
    if config is not None:
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(_plain(config), sort_keys=False).strip(), "```"]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def files_to_upload(output_dir: str) -> list[str]:
    """Relative paths push_to_hub uploads: everything in output_dir except checkpoints and temp files."""
    import fnmatch

    root = Path(output_dir)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel.split("/")[0], pat) for pat in UPLOAD_IGNORE):
            out.append(rel)
    return out


def read_model_config(source: str, key: str, **overrides):
    """AutoConfig.from_pretrained(source, **overrides) (a local folder or a Hub id); what cannot be read is a ConfigError
    naming `key`, the setting that gave `source`."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **overrides)
    except (OSError, ValueError) as e:  # no such folder or Hub id (or offline), or a folder without a model config.json
        raise ConfigError(f"{key}: could not read a model config from '{source}': {e}") from None


def repo_name(output_dir: str, repo_id: Optional[str]) -> str:
    """hub_model_id, else output_dir's folder name (created under the user's account)."""
    return repo_id or Path(output_dir).resolve().name


def check_push_to_hub(output_dir: str, repo_id: Optional[str] = None) -> str:
    """Before any training: what would make the upload at the end fail for sure, found with no network call
    (every process gets the same answer). Returns the repository id that will be used."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = repo_name(output_dir, repo_id)
    key = "hub_model_id" if repo_id else "hub_model_id (unset, so output_dir's folder name)"
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise ConfigError(f"push_to_hub: {key} '{name}' is not a valid repository id ({e}). "
                          "Set --hub_model_id to user/name or org/name.") from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("push_to_hub needs the Hub, but HF_HUB_OFFLINE is set. Unset one of them "
                          "(and upload later with `hf upload REPO OUTPUT_DIR`).")
    if get_token() is None:
        raise ConfigError("push_to_hub needs a Hugging Face token and none is set: run `hf auth login` or set HF_TOKEN "
                          "before training, or unset push_to_hub.")
    return name


def push_to_hub(output_dir: str, repo_id: Optional[str] = None, private: bool = False, token: Optional[str] = None) -> str:
    """Create (or reuse) the Hub repo and upload the model folder in one commit. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = repo_name(output_dir, repo_id)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = url.repo_id  # with the namespace: a bare name is created under the user's account, and uploads need both
    files = files_to_upload(output_dir)
    logger.info("Uploading %d files to %s", len(files), url)
    commit = api.upload_folder(folder_path=output_dir, repo_id=repo_id, allow_patterns=files,
                               commit_message="Upload model trained with hfssl")
    return str(commit)


def _plain(config: Any) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config), default=str))
