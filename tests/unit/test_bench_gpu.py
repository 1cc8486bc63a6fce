"""benchmarks/bench_gpu.py runs end to end in its tiny CPU mode, so the GPU benchmark cannot rot unseen."""

import json

from conftest import run_cli


def test_bench_gpu_tiny_mode_runs_every_workload(tmp_path):
    out = tmp_path / "bench.json"
    run_cli("benchmarks/bench_gpu.py", ["--tiny", "--workloads", "mlm,mlm_varlen,w2v,w2v_long,mlm_bf16", "--long_seconds", "1",
                                        "--variants", "hf_trainer,hfssl,hf_loop,hf_trainer_bf16,hfssl_bf16_eager", "--output", out],
            env={"OMP_NUM_THREADS": "1"}, timeout=300)
    report = json.loads(out.read_text())
    assert {"torch", "transformers", "preset", "peak_tflops"} <= set(report["machine"])
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
