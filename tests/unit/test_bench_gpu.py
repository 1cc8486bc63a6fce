"""benchmarks/bench_gpu.py runs end to end in its tiny CPU mode, so the GPU benchmark cannot rot unseen."""

import json

from conftest import run_cli


def test_bench_gpu_tiny_mode_runs_every_workload(tmp_path):
    out = tmp_path / "bench.json"
    run_cli("benchmarks/bench_gpu.py", ["--tiny", "--workloads", "mlm,mlm_varlen,w2v,w2v_long,mlm_bf16", "--long_seconds", "1",
                                        "--vocab_size", "600", "--variants", "hf_trainer,hfssl,hf_loop,hf_trainer_bf16,hfssl_bf16_eager", "--output", out],
            env={"OMP_NUM_THREADS": "1"}, timeout=300)
    report = json.loads(out.read_text())
    assert {"torch", "transformers", "preset", "peak_tflops"} <= set(report["machine"])
    assert len(report["machine"]["code_sha1"]) == 12
    assert report["machine"]["text_model"]["vocab_size"] == 600  # --vocab_size over the preset's 500
    results = report["results"]
    for workload, variants, unit in (("mlm", ("hf_trainer", "hfssl"), "tokens_per_s"), ("mlm_varlen", ("hf_trainer", "hfssl"), "tokens_per_s"),
                                     ("w2v", ("hf_loop", "hfssl"), "audio_s_per_s"),
                                     ("mlm_bf16", ("hf_trainer_bf16", "hfssl_bf16_eager"), "tokens_per_s")):
        for variant in variants:
            r = results[workload][variant]
            assert r[unit] > 0 and r["step_ms"] > 0 and r["model_tflops_per_s"] > 0 and 0 < r["mfu_vs_measured"] < 1
    assert results["mlm"]["hfssl"]["padding_fraction"] == 0.0  # packed blocks
    assert results["mlm_varlen"]["hfssl"]["padding_fraction"] < results["mlm_varlen"]["hf_trainer"]["padding_fraction"]
    assert set(report["ratios"]) == {f"{k}{t}" for k in ("mlm: hfssl / hf_trainer", "mlm_varlen: hfssl / hf_trainer", "w2v: hfssl / hf_loop",
                                                                   "mlm_bf16: hfssl_bf16_eager / hf_trainer_bf16")
                                     for t in ("", " (CPU time)")}
    long = results["w2v_long"]["hfssl"]
    assert long["steps"] >= 10 and long["non_finite_updates"] == 0 and long["codebook_perplexity_last"] >= 1


def test_gpu_checks_script_runs_its_steps_within_the_budget(tmp_path):
    """benchmarks/gpu_checks.sh (every GPU check in one device call) at tiny sizes on the CPU: a step that does
    not fit what is left of the budget is skipped and says so; one that fits leaves its JSON in the archive."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "BENCH_ARGS": "--tiny", "WHEELS": str(tmp_path / "none"),
           "ONLY": "^wav2vec 2.0 base$", "OMP_NUM_THREADS": "1"}
    skipped = subprocess.run(["bash", str(root / "benchmarks" / "gpu_checks.sh")], env={**env, "OUT": str(tmp_path / "a"), "BUDGET": "30"},
                             capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "== skipped wav2vec 2.0 base: " in (tmp_path / "a" / "log.txt").read_text()
    ran = subprocess.run(["bash", str(root / "benchmarks" / "gpu_checks.sh")], env={**env, "OUT": str(tmp_path / "b"), "BUDGET": "300"},
                         capture_output=True, text=True, timeout=400)
    assert ran.returncode == 0, ran.stderr[-2000:]
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "== wav2vec 2.0 base: exit 0" in log and "attention and packing tests" not in log  # ONLY picked one step
    with tarfile.open(tmp_path / "b" / "gpu-checks.tgz") as archive:
        assert archive.getnames() == ["r", "r/bench_w2v.json"]
        report = json.load(archive.extractfile("r/bench_w2v.json"))
    assert {v: r["audio_s_per_s"] > 0 for v, r in report["results"]["w2v"].items()} == {"hf_loop": True, "hfssl": True}
