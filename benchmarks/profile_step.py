#!/usr/bin/env python
"""Where an hfssl training step's time goes: torch.profiler over the real loop (`hfssl.trainer.train`) on
bench_gpu.py's synthetic workloads, with each phase of an update labelled (collate, forward+backward,
optimizer step, record), plus the operators that read values back to the host (item/nonzero/tolist: a
device sync on a GPU).

    python benchmarks/profile_step.py --workload mlm                 # CPU preset (BERT 4 x 256, 32 x 128)
    python benchmarks/profile_step.py --workload mlm_varlen
    python benchmarks/profile_step.py --workload w2v --preset cpu
    python benchmarks/profile_step.py --workload mlm --preset gpu    # on a GPU (CUDA time columns)

Prints the phase table and the top operators by self time; writes the table as JSON with --output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import bench_gpu_workloads as workloads  # noqa: E402
from hfssl import trainer  # noqa: E402
from hfssl.data import batching  # noqa: E402

PHASES = {"collate": (batching._Collate, "__call__"), "forward_backward": (trainer, "_forward_backward"),
          "optimizer_step": (trainer, "_optimizer_step"), "record_update": (trainer, "_record_update")}
HOST_READS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::index")


@contextlib.contextmanager
def labelled_phases():
    """Wrap the loop's step functions in record_function labels, without touching the package."""
    saved = {}
    for label, (owner, name) in PHASES.items():
        original = getattr(owner, name)
        saved[label] = (owner, name, original)

        def wrapped(*args, _original=original, _label=label, **kw):
            with torch.profiler.record_function(f"## {_label}"):
                return _original(*args, **kw)

        setattr(owner, name, functools.wraps(original)(wrapped))
    try:
        yield
    finally:
        for owner, name, original in saved.values():
            setattr(owner, name, original)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["mlm", "mlm_varlen", "w2v"], default="mlm")
    p.add_argument("--preset", choices=sorted(workloads.PRESETS), default="cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="updates profiled (default: the preset's)")
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    preset = dict(workloads.PRESETS[args.preset])
    if args.steps:  # the timed window starts after the warm-up updates: keep at least one update in it
        warm = max(1, min(preset["warm"], preset["w2v_warm"], args.steps // 2))
        preset.update(steps=args.steps, w2v_steps=args.steps, warm=warm, w2v_warm=warm)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if preset["device"] == "cuda" else [])
    with tempfile.TemporaryDirectory() as scratch, labelled_phases(), torch.profiler.profile(activities=activities) as prof:
        preset["scratch"] = scratch
        if args.workload == "w2v":
            result = workloads.hfssl_w2v(preset, compile=args.compile)
        else:
            result = workloads.hfssl_mlm(preset, compile=args.compile, varlen=args.workload == "mlm_varlen")
    events = prof.key_averages()
    steps = preset["w2v_steps"] if args.workload == "w2v" else preset["steps"]
    phases = {e.key[3:]: {"ms_per_update": round(e.cpu_time_total / 1000 / steps, 2), "calls": e.count}
              for e in events if e.key.startswith("## ")}
    host_reads = {e.key: round(e.count / steps, 2) for e in events if e.key in HOST_READS}
    print(json.dumps({"result": result, "phases": phases, "host_reads_per_update": host_reads}, indent=1))
    sort = "self_cuda_time_total" if preset["device"] == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    if args.output:
        top = sorted((e for e in events if not e.key.startswith("## ")), key=lambda e: -e.self_cpu_time_total)[: args.rows]
        Path(args.output).write_text(json.dumps({"workload": args.workload, "preset": args.preset, "compile": args.compile,
                                                 "result": result, "phases": phases, "host_reads_per_update": host_reads,
                                                 "top_self_cpu_ms_per_update": {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in top}},
                                                indent=1))


if __name__ == "__main__":
    main()
