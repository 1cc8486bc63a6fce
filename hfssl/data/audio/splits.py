"""Training and validation audio from a config: ``build_audio_splits``.

Sources are listed (folders, manifests or a ``datasets`` dataset), then either scanned in full before
training (``AudioDataset``) or streamed and checked as read (``AudioStream``); without a validation
set a seeded share of the training files is held out.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from hfssl.data.audio.datasets import AudioDataset, AudioStream
from hfssl.data.audio.decode import (
    AudioScanError,
    BadAudioError,
    check_length,
    decode_bytes,
    scan_audio_split,
    write_skipped_report,
)
from hfssl.data.audio.files import AUDIO_EXTENSIONS, find_audio_files, list_audio_dir, read_manifest
from hfssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

STREAM_SKIPPED_REPORT = "skipped_audio_stream.tsv"


@dataclass
class _Listed:
    """Training and validation rows before validation. Rows with embedded bytes point (``"_index"``)
    into their split's source, a ``datasets.Dataset``; rows of files on disk need none."""

    train: list[dict]
    validation: list[dict] | None = None
    train_source: object = None
    validation_source: object = None


def build_audio_splits(cfg, output_dir: str | os.PathLike | None, min_samples: int, accelerator=None,
                       crop_seconds: float | None = None, hub_splits: tuple[str, str | None] | None = None):
    """Training and validation audio from ``cfg`` (``AudioDataArguments``), validated before training.

    Sources: ``train_dir`` (``list_audio_dir``: plain folders, ``<label>/`` folders, or an audiofolder
    with metadata.csv), ``train_file`` (a manifest whose ``audio_column_name`` holds paths), or
    ``dataset_name`` (``datasets.load_dataset`` with audio decoding turned off; bytes or paths are
    decoded with soundfile). Validation: ``validation_dir`` / ``validation_file`` / the dataset's
    ``validation`` split, else a seeded ``validation_split_percentage`` of the training files
    (``cfg.seed``), else none.

    Every file is decoded in full (``scan_audio``) before training: too short for ``min_samples``
    (the feature encoder's receptive field) or ``min_duration_in_seconds``, empty, undecodable or
    NaN/inf. ``on_bad_audio="error"``: raises ``hfssl.errors.DataError`` (caught by the CLI,
    exit code 2) naming every bad file and its reason, whose ``__cause__`` is the ``AudioScanError``.
    ``"skip"``: writes ``output_dir/skipped_audio.tsv`` (train and validation) and logs the counts.
    Pass ``output_dir=None`` on non-main processes so only one process writes the report. With
    ``accelerator`` (several processes, all calling this with the same ``cfg``) the files are divided
    between the processes and the outcomes gathered: the corpus is decoded once in all, not once per
    process.

    Streaming (``cfg.streaming``): the train split is an ``AudioStream`` (IterableDataset, no length,
    sharded by the caller), checked as examples arrive; only the validation files are scanned before
    training. Files on disk are listed (cheap) but not decoded in advance, in one seeded order.

    ``crop_seconds`` (default ``cfg.max_duration_in_seconds``; ``math.inf``: nothing is cropped) is what the
    log and report count as long; ``hub_splits`` (train, validation or None) overrides the dataset's split names.

    Returns:
        (train, validation, report): ``AudioDataset`` (or ``AudioStream``), ``AudioDataset`` or None,
        and ``{"train": {"total", "kept", "skipped", "long", "hours"}, "validation": {...} or None,
        "skipped_report": path or None}`` with kept + skipped = total per split. When validation files are
        held out of train, train also has ``held_out`` (of its kept files), and its long / hours count only the
        files left for training.
    """
    if crop_seconds is None:  # pretraining crops to max_duration_in_seconds (fine-tuning checks its own crop key)
        check_crop_length("max_duration_in_seconds", cfg.max_duration_in_seconds,
                          int(round(cfg.max_duration_in_seconds * cfg.sampling_rate)), cfg.sampling_rate, min_samples)
    try:
        if cfg.dataset_name:
            train_raw, val_raw = _hub_splits(cfg, *(hub_splits or (cfg.dataset_train_split, cfg.dataset_validation_split)))
            if cfg.streaming:
                return _stream_hub(train_raw, val_raw, cfg, output_dir, min_samples, accelerator)
            listed = _hub_rows(train_raw, val_raw, cfg)
        else:
            listed = _file_rows(cfg)
    except (NotADirectoryError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(str(e)) from e
    where = cfg.train_dir or cfg.train_file or cfg.dataset_name
    if not listed.train:
        raise DataError(f"No audio files found in '{where}' (extensions: {', '.join(AUDIO_EXTENSIONS)}).")
    if listed.validation is not None and not listed.validation:  # a validation set was asked for: never silently none
        raise DataError(f"No audio files found for the validation split in '{_validation_where(cfg)}' "
                        f"(extensions: {', '.join(AUDIO_EXTENSIONS)}).")
    if cfg.streaming:
        return _stream_files(listed.train, listed.validation, cfg, output_dir, min_samples, where, accelerator)
    crop = cfg.max_duration_in_seconds if crop_seconds is None else crop_seconds
    return _scanned_splits(listed, cfg, output_dir, min_samples, where, accelerator, crop)


def seconds_rounded_up(samples: int, sampling_rate: int) -> float:
    """`samples` in seconds, rounded up to 0.1 ms so a suggested setting is enough (the 1e-6 absorbs float error:
    560 / 16000 -> 0.035, not 0.0351)."""
    return math.ceil(samples / sampling_rate * 1e4 - 1e-6) / 1e4


def check_crop_length(key: str, seconds: float, crop_samples: int, sampling_rate: int, min_samples: int) -> None:
    """A crop shorter than the model's shortest input (``min_samples``: the receptive field / fbank window) gives
    zero frames, and training would die on the first batch: refused before any audio is read."""
    if crop_samples < min_samples:
        need = seconds_rounded_up(min_samples, sampling_rate)
        raise ConfigError(f"{key} {seconds} crops audio to {crop_samples} samples at {sampling_rate} Hz, fewer than the "
                          f"{min_samples} samples ({min_samples / sampling_rate:.4g} s) the model needs for one frame (its "
                          f"receptive field / feature window): training would fail. Set {key} to at least {need:g}.")


# ----------------------------------------------------------------------------- sources


def _hub_splits(cfg, train_split: str, validation_split: str | None):
    """(train, validation or None) of ``cfg.dataset_name``, audio column cast to ``Audio(decode=False)``;
    validation_split None: the dataset's 'validation' split when it has one."""
    name = cfg.dataset_name
    kw = {"streaming": bool(cfg.streaming)}
    if cfg.dataset_config_name:
        kw["name"] = cfg.dataset_config_name
    if os.path.isdir(name) and find_audio_files(name):
        # datasets' audiofolder builder re-encodes audio with torchcodec (+FFmpeg); a folder
        # is read directly with soundfile instead, with the same metadata columns.
        raise DataError(f"dataset_name '{name}' is a local folder of audio files: use --train_dir {name} "
                        "(read with soundfile, same audiofolder metadata) instead of dataset_name.")
    raw = _load_hub(name, kw)
    train = _pick_split(raw, train_split, True, cfg)
    if validation_split:
        return train, _pick_split(raw, validation_split, True, cfg)
    return train, _pick_split(raw, "validation", False, cfg)


def _load_hub(name: str, kw: dict):
    import datasets

    try:
        return datasets.load_dataset(name, **kw)
    except (ImportError, OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
        cause = e.__cause__ or e
        raise DataError(f"Could not load dataset '{name}': {type(cause).__name__}: {cause}") from e


def hub_split_rows(cfg, expr: str):
    """(rows, source) of split(s) ``expr`` of ``cfg.dataset_name`` (audio not decoded), or None when the
    dataset has no such split: an evaluation split loaded apart from training (see `scan_eval_split`)."""
    kw = {"name": cfg.dataset_config_name} if cfg.dataset_config_name else {}
    part = _pick_split(_load_hub(cfg.dataset_name, kw), expr, False, cfg)
    if part is None:
        return None
    return _rows_from_hf(part, cfg.audio_column_name, f"{cfg.dataset_name}[{expr}]"), part


def scan_eval_split(rows: list[dict], cfg, min_samples: int, split: str, where: str, output_dir=None, source=None,
                    accelerator=None) -> AudioDataset:
    """A validation or test split given apart from training (``rows`` of files, or of ``source``, a
    ``datasets.Dataset``), every file decoded and checked as the training files are. ``on_bad_audio``
    error: raises `DataError` naming each bad file; skip: drops them and lists them in
    ``output_dir/skipped_audio_<split>.tsv`` (pass ``output_dir=None`` on non-main processes)."""
    good, bad, _ = _scan_rows(rows, cfg, min_samples, source, accelerator)
    if bad and cfg.on_bad_audio == "error":
        error = AudioScanError(bad, len(rows))
        raise DataError(str(error)) from error
    if bad:
        listed = write_skipped_report(bad, output_dir, f"skipped_audio_{split}.tsv") if output_dir is not None else None
        logger.warning("%s audio (%s): skipped %d of %d file(s)%s, e.g. %s: %s", split, where, len(bad), len(rows),
                       f", listed in {listed}" if listed else "", *bad[0])
    if not good:
        raise DataError(f"All {len(rows)} {split} audio files in '{where}' are bad.")
    return AudioDataset(good, cfg.sampling_rate, source, cfg.audio_column_name)


def _pick_split(raw, expr: str, required: bool, cfg):
    """The split(s) named by ``expr`` ('+' joins several), or None when absent and not ``required``."""
    import datasets

    name = cfg.dataset_name
    names = [x.strip() for x in expr.split("+") if x.strip()]
    missing = [x for x in names if x not in raw]
    if missing:
        if not required:
            return None
        raise DataError(f"dataset '{name}' has no split {', '.join(repr(x) for x in missing)} "
                        f"(splits: {', '.join(raw)}); set dataset_train_split / dataset_validation_split.")
    parts = [raw[x] for x in names]
    for x, part in zip(names, parts):
        if cfg.audio_column_name not in part.column_names:
            raise DataError(f"dataset '{name}' split '{x}' has no column '{cfg.audio_column_name}'; "
                            f"columns: {', '.join(part.column_names)}. Set audio_column_name.")
    joined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return joined.cast_column(cfg.audio_column_name, datasets.Audio(decode=False))


def _hub_rows(train_raw, val_raw, cfg) -> _Listed:
    name, column = cfg.dataset_name, cfg.audio_column_name
    listed = _Listed(_rows_from_hf(train_raw, column, f"{name}[{cfg.dataset_train_split}]"), train_source=train_raw)
    if val_raw is not None:
        listed.validation = _rows_from_hf(val_raw, column, f"{name}[{cfg.dataset_validation_split or 'validation'}]")
        listed.validation_source = val_raw
    return listed


def _file_rows(cfg) -> _Listed:
    train = list_audio_dir(cfg.train_dir) if cfg.train_dir else read_manifest(cfg.train_file, cfg.audio_column_name)
    validation = None
    if cfg.validation_dir:
        validation = list_audio_dir(cfg.validation_dir)
    elif cfg.validation_file:
        validation = read_manifest(cfg.validation_file, cfg.audio_column_name)
    return _Listed(train, validation)


def _rows_from_hf(ds, column: str, name: str) -> list[dict]:
    """Rows for a ``datasets.Dataset`` whose audio column is cast to ``Audio(decode=False)``.

    Audio stored as a local file keeps its path; embedded bytes are referenced by ``"_index"``
    (read again at batch time, never held in memory).
    """
    meta_cols = [c for c in ds.column_names if c != column]
    rows = []
    for start in range(0, len(ds), 1000):
        chunk = ds[start : start + 1000]
        for j, audio in enumerate(chunk[column]):
            i = start + j
            meta = {c: chunk[c][j] for c in meta_cols}
            path = (audio or {}).get("path")
            if audio is not None and audio.get("bytes") is None and path and os.path.isfile(path):
                rows.append({"path": path, **meta})
            else:
                rows.append({"path": f"{name}[{i}]" + (f" ({path})" if path else ""), "_index": i, **meta})
    return rows


# ----------------------------------------------------------------------------- scanned splits


def _scanned_splits(listed: _Listed, cfg, output_dir, min_samples: int, where: str, accelerator, crop: float):
    """Every training and validation file decoded and checked before training."""
    sr = cfg.sampling_rate
    good, bad, num_long = _scan_rows(listed.train, cfg, min_samples, listed.train_source, accelerator, crop)
    report: dict = {"train": _split_report(len(listed.train), good, bad, num_long, sr), "validation": None,
                    "skipped_report": None}
    all_bad, total = list(bad), len(listed.train)
    if listed.validation is not None:
        vgood, vbad, vlong = _scan_rows(listed.validation, cfg, min_samples, listed.validation_source, accelerator, crop)
        report["validation"] = _split_report(len(listed.validation), vgood, vbad, vlong, sr)
        all_bad += vbad
        total += len(listed.validation)
    _handle_bad(all_bad, total, cfg, output_dir, report)
    if not good:
        raise DataError(f"All {len(listed.train)} training audio files in '{where}' are bad; see {report['skipped_report']}.")
    if listed.validation is not None and not vgood:
        _all_validation_bad(cfg, len(listed.validation), report)

    train = AudioDataset(good, sr, listed.train_source, cfg.audio_column_name)
    validation = None
    if listed.validation is not None:
        validation = AudioDataset(vgood, sr, listed.validation_source, cfg.audio_column_name) if vgood else None
    elif cfg.validation_split_percentage > 0 and len(train) >= 2:
        train, validation = _hold_out(train, cfg, report, crop)
    cropped = (f"{report['train']['long']} of them longer than {crop:.1f} s (randomly cropped)" if math.isfinite(crop)
               else "kept whole (not cropped)")
    logger.info("Training audio: %d files (%.2f h), %s%s; validation: %s.", len(train), train.hours, cropped,
                f", {report['train']['held_out']} held out for validation" if "held_out" in report["train"] else "",
                f"{len(validation)} files ({validation.hours * 60:.1f} min)" if validation is not None else "none")
    return train, validation, report


def _hold_out(train: AudioDataset, cfg, report: dict, crop: float) -> tuple[AudioDataset, AudioDataset]:
    """(train, validation): a seeded ``validation_split_percentage`` of the good training files, the
    same on every process and on resume; recorded in ``report``."""
    order, n_val = _held_out_order(len(train), cfg)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    validation, train = train.select(val_idx), train.select(train_idx)
    long = int((validation.lengths > crop * cfg.sampling_rate).sum())
    report["validation"] = {"total": n_val, "kept": n_val, "skipped": 0, "long": long, "hours": validation.hours,
                            "held_out_from_train": True}
    # long and hours describe what is trained on; kept (+ skipped = total) stays the scan's count, held_out of them
    report["train"].update(held_out=n_val, hours=train.hours,
                           long=int((train.lengths > crop * cfg.sampling_rate).sum()))
    return train, validation


def _held_out_order(n: int, cfg) -> tuple[np.ndarray, int]:
    """One seeded order of n training files (the same on every process and on resume) and how many of
    them to hold out for validation_split_percentage (at least 1, never all)."""
    order = np.random.default_rng([int(getattr(cfg, "seed", 0)), 7]).permutation(n)
    return order, min(n - 1, max(1, round(n * cfg.validation_split_percentage / 100)))


def _scan_rows(rows: list[dict], cfg, min_samples: int, source=None, accelerator=None,
               crop: float | None = None) -> tuple[list[dict], list[tuple[str, str]], int]:
    """Validate rows (files or embedded bytes); returns (good rows with num_samples, bad, num_long).
    Files are divided over the processes of `accelerator` (`scan_audio_split`)."""
    min_d = _min_duration(cfg)
    max_d = cfg.max_duration_in_seconds if crop is None else crop  # only counted (num_long), never dropped
    sr = cfg.sampling_rate
    on_files = [r for r in rows if "_index" not in r]
    result = scan_audio_split([r["path"] for r in on_files], sr, min_samples=min_samples, min_duration_in_seconds=min_d,
                              max_duration_in_seconds=max_d, on_bad_audio="skip", num_workers=cfg.preprocessing_num_workers,
                              accelerator=accelerator)
    lengths = dict(result.good)
    bad = list(result.bad)
    num_long = result.num_long
    good = []
    for r in rows:
        if "_index" in r:  # embedded bytes: decode in full, same rules as scan_audio
            try:
                wave = decode_bytes(source[int(r["_index"])][cfg.audio_column_name]["bytes"], r["path"], sr)
                num_long += check_length(r["path"], wave.shape[0], wave.shape[0] / sr, sr, min_samples, min_d, max_d)
            except BadAudioError as e:
                bad.append((e.path, e.reason))
                continue
            good.append({**r, "num_samples": int(wave.shape[0])})
        elif r["path"] in lengths:
            good.append({**r, "num_samples": lengths[r["path"]]})
    return good, bad, num_long


# ----------------------------------------------------------------------------- streamed splits


def _stream_hub(train_raw, val_raw, cfg, output_dir, min_samples: int, accelerator=None):
    """A streamed Hub dataset: the train split is read as it arrives; the first 2000 validation
    examples, if any, form a bounded validation set scanned before training."""
    import datasets

    name, sr = cfg.dataset_name, cfg.sampling_rate
    logger.warning("Streaming: audio cannot be validated before training; bad examples are %s as they arrive.",
                   "an error" if cfg.on_bad_audio == "error" else "skipped")
    train = AudioStream(train_raw, cfg.audio_column_name, sr, min_samples, _min_duration(cfg), cfg.on_bad_audio,
                        f"{name}[train]", _stream_report_path(cfg, output_dir))
    report = {"train": None, "validation": None, "skipped_report": None}
    validation = None
    if val_raw is not None:
        # The audio column as the plain {bytes, path} struct it is when not decoded: building a Dataset
        # with the Audio feature would re-encode every clip (datasets needs torchcodec + FFmpeg for that).
        features = val_raw.features.copy()
        features[cfg.audio_column_name] = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
        subset = datasets.Dataset.from_list(list(val_raw.take(2000)), features=features)
        val_rows = _rows_from_hf(subset, cfg.audio_column_name, f"{name}[validation]")
        good, bad, num_long = _scan_rows(val_rows, cfg, min_samples, subset, accelerator)
        validation = AudioDataset(good, sr, subset, cfg.audio_column_name) if good else None
        report["validation"] = _split_report(len(val_rows), good, bad, num_long, sr)
        _handle_bad(bad, len(val_rows), cfg, output_dir, report)
    return train, validation, report


def _stream_files(train_rows, val_rows, cfg, output_dir, min_samples: int, where: str, accelerator=None):
    """Streaming from files on disk. Listing thousands of hours of audio is cheap; decoding all of it
    before training is not, so training files are decoded and checked only when read. One seeded
    order for every process and every pass (folders are often sorted by speaker). Without a
    validation set, a seeded share of the listed files is held out; validation files are scanned
    before training like any validation set."""
    import datasets

    sr = cfg.sampling_rate
    order, held_out = _held_out_order(len(train_rows), cfg)
    rows = [train_rows[i] for i in order]
    if val_rows is None and cfg.validation_split_percentage > 0 and len(rows) >= 2:
        val_rows, rows = rows[:held_out], rows[held_out:]
    else:
        held_out = 0
    report: dict = {"train": {"total": len(rows), "streamed": True, "held_out": held_out}, "validation": None,
                    "skipped_report": None}
    validation = None
    if val_rows:
        good, bad, num_long = _scan_rows(val_rows, cfg, min_samples, accelerator=accelerator)
        report["validation"] = _split_report(len(val_rows), good, bad, num_long, sr)
        _handle_bad(bad, len(val_rows), cfg, output_dir, report)
        if not good and not held_out:  # the user's validation files (held-out ones: train is not checked either)
            _all_validation_bad(cfg, len(val_rows), report)
        validation = AudioDataset(good, sr) if good else None
    stream = datasets.Dataset.from_dict({"audio": [r["path"] for r in rows]}).to_iterable_dataset()
    train = AudioStream(stream, "audio", sr, min_samples, _min_duration(cfg), cfg.on_bad_audio, where,
                        _stream_report_path(cfg, output_dir))
    logger.info("Streaming %d training audio files from '%s' (decoded and checked as read; bad ones are %s)%s; validation: %s.",
                len(rows), where, "an error" if cfg.on_bad_audio == "error" else f"skipped and listed in {STREAM_SKIPPED_REPORT}",
                f", {held_out} held out for validation" if held_out else "",
                f"{len(validation)} files ({validation.hours * 60:.1f} min)" if validation is not None else "none")
    return train, validation, report


def _stream_report_path(cfg, output_dir) -> str | None:
    """Where a stream lists the bad examples it skips: on the main process, with on_bad_audio skip."""
    if output_dir is not None and cfg.on_bad_audio == "skip":
        return os.path.join(output_dir, STREAM_SKIPPED_REPORT)
    return None


# ----------------------------------------------------------------------------- reports


def _validation_where(cfg) -> str:
    return cfg.validation_dir or cfg.validation_file or f"{cfg.dataset_name}[{cfg.dataset_validation_split or 'validation'}]"


def _all_validation_bad(cfg, n: int, report: dict) -> None:
    """Every validation file was skipped: an error, as in fine-tuning, not a run that silently has no validation."""
    listed = f"; see {report['skipped_report']}" if report.get("skipped_report") else ""
    other = ("leave validation_dir / validation_file unset to hold out validation_split_percentage of train"
             if cfg.validation_dir or cfg.validation_file else
             "choose another split of the dataset (dataset_validation_split in pretraining, dataset_split_names in fine-tuning)")
    raise DataError(f"All {n} validation audio files in '{_validation_where(cfg)}' are bad{listed}: fix or replace them, or {other}.")


def _min_duration(cfg) -> float | None:
    return cfg.min_duration_in_seconds if cfg.min_duration_in_seconds > 0 else None


def _split_report(total: int, good: list[dict], bad: list, num_long: int, sr: int) -> dict:
    return {"total": total, "kept": len(good), "skipped": len(bad), "long": num_long,
            "hours": float(sum(r["num_samples"] for r in good)) / sr / 3600}


def _handle_bad(bad, total, cfg, output_dir, report) -> None:
    if bad and cfg.on_bad_audio == "error":
        error = AudioScanError(bad, total)
        raise DataError(str(error)) from error
    if cfg.on_bad_audio == "skip":
        if output_dir is not None:
            report["skipped_report"] = write_skipped_report(bad, output_dir)
        for split in ("train", "validation"):
            r = report.get(split)
            if r and "kept" in r:  # a streamed split is checked as it is read
                logger.info("%s audio: %d kept + %d skipped = %d files%s", split, r["kept"], r["skipped"], r["total"],
                            f" (skipped files listed in {report['skipped_report']})" if r["skipped"] and report["skipped_report"] else "")
        if bad:
            logger.warning("Skipped %d bad audio file(s), e.g. %s: %s", len(bad), bad[0][0], bad[0][1])
