"""Audio data for speech pretraining and fine-tuning; import from the module that holds a name.

- ``files``: which files there are: ``find_audio_files``, ``read_manifest`` (csv/tsv/jsonl),
  ``list_audio_dir`` (audiofolder layouts), ``AUDIO_EXTENSIONS``.
- ``decode``: soundfile decoding + resampling and the per-file checks: ``load_audio``,
  ``decode_bytes``, ``check_length``, ``resampled_length``, ``scan_audio`` -> ``ScanResult``,
  ``write_skipped_report``, ``BadAudioError`` / ``AudioScanError`` (``hfssl.errors.DataError``).
- ``geometry``: the conv feature encoder: ``receptive_field``, ``num_frames``.
- ``batching``: batch-time ``random_crop`` / ``normalize`` and batch plans: ``duration_batches``
  and ``audio_batch_plan`` (by padded seconds or by count, the one switch objectives and tasks use).
- ``datasets``: what the loop reads: ``AudioDataset`` (map-style, ``.lengths``), ``AudioStream``.
- ``splits``: ``build_audio_splits(cfg, output_dir, min_samples)``: train/validation from a config,
  validated before training (or streamed), with the skipped-file report.

Typical flow::

    rows = files.list_audio_dir("data/train")             # or files.read_manifest("train.csv", "audio")
    result = decode.scan_audio([r["path"] for r in rows], 16_000,
                               min_samples=geometry.receptive_field(cfg.conv_kernel, cfg.conv_stride),
                               on_bad_audio="skip")
    decode.write_skipped_report(result.bad, output_dir)
    plan = batching.audio_batch_plan([n for _, n in result.good], batch_size=8, max_batch_seconds=200,
                                     sampling_rate=16_000, max_length=max_length, seed=seed, epoch=epoch)
    wave = batching.random_crop(batching.normalize(decode.load_audio(path, 16_000)), max_length, generator)
"""
