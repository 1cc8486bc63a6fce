#!/usr/bin/env python
"""Text preprocessing at corpus scale: hfssl's tokenize + pack vs the `transformers` run_mlm.py recipe.

Both turn the same generated corpus of real English text (one document per line) into 128-token
blocks, in one process, one after the other, with the same tokenizer and the same `num_proc`:

  run_mlm  load_dataset("text") -> map(tokenizer(text, return_special_tokens_mask=True), num_proc)
           -> map(group_texts, num_proc): concatenate each map batch's lists and cut them into
           max_seq_length chunks (the remainder of every batch is dropped), as examples/pytorch/
           language-modeling/run_mlm.py does without --line_by_line.
  hfssl    load_text_datasets + prepare_text_splits: tokenize, then pack the whole stream into
           [CLS] + 126 + [SEP] blocks through datasets.map, into hfssl's cache.

Each side gets its own empty datasets cache, so each pays for load_dataset's Arrow conversion. The
corpus file is read once before either runs (warm page cache for both). hfssl runs first, so any
warm-up favours run_mlm. Then each runs again on the unchanged corpus (its cache reused).

Memory: a thread samples the process and its workers every 0.2 s; "peak PSS" is the largest sum of
their proportional set sizes (shared pages counted once), "peak RSS" the largest single process.
Throughput: corpus MB per second and output tokens per second, load to blocks (wall clock), and
output tokens per CPU-second (this process and its workers), which depends far less on what else
runs on a shared machine.

The corpus: documents of 1-4 paragraphs drawn (seeded) from two offline sources of real text, the
Debian package descriptions in benchmarks/payoff/data/corpus.txt.gz and hfssl's built-in corpus of
Python standard-library docstrings, written until the target size. Deterministic for a seed.

    python benchmarks/bench_text_prep.py --sizes 250            # ~10 min on 2 busy cores
    python benchmarks/bench_text_prep.py --sizes 250 1000 --num-proc 2
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import itertools
import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # both sides: parallelism comes from num_proc
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402
import transformers  # noqa: E402

from hfssl.data.text.corpus import builtin_corpus, load_text_datasets  # noqa: E402
from hfssl.data.text.prepare import prepare_text_splits  # noqa: E402
from hfssl.data.text.tokenizer import train_tokenizer  # noqa: E402
from hfssl.objectives.mlm.config import MLMConfig  # noqa: E402

MB = 1e6


# ----------------------------------------------------------------------------------- corpus

def generate_corpus(path: Path, target_bytes: int, seed: int) -> dict:
    with gzip.open(REPO / "benchmarks" / "payoff" / "data" / "corpus.txt.gz", "rt", encoding="utf-8") as f:
        paragraphs = [line.strip() for line in f if line.strip()]
    paragraphs += builtin_corpus()
    rng = np.random.default_rng(seed)
    written = documents = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target_bytes:
            counts = rng.integers(1, 5, 10_000)
            picks = rng.integers(0, len(paragraphs), int(counts.sum()))
            bounds = np.concatenate([[0], np.cumsum(counts)])
            lines = [" ".join(paragraphs[j] for j in picks[bounds[i] : bounds[i + 1]]) + "\n" for i in range(len(counts))]
            for line in lines:
                written += len(line.encode("utf-8"))
                documents += 1
                out.write(line)
                if written >= target_bytes:
                    break
    return {"bytes": written, "documents": documents, "sources": len(paragraphs)}


# ----------------------------------------------------------------------------------- measurement

class PeakMemory:
    """Peak of the summed PSS of this process and its children, and of the largest single RSS."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.me = interval, psutil.Process()

    def __enter__(self):
        self.peak_pss = self.peak_rss = 0
        self.start_pss = self._sample()[0]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> tuple[int, int]:
        pss = rss = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss += info.pss
            rss = max(rss, info.rss)
        return pss, rss

    def _run(self):
        while not self.stop.wait(self.interval):
            pss, rss = self._sample()
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        pss, rss = self._sample()
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)


def _use_cache(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    datasets.config.HF_DATASETS_CACHE = str(folder)


# ----------------------------------------------------------------------------------- the two recipes

def run_mlm_recipe(corpus: Path, tokenizer, num_proc: int, max_seq_length: int) -> dict:
    """The run_mlm.py preprocessing (grouped texts), written out; returns its timings and output size."""
    started = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": str(corpus)})
    loaded = time.perf_counter()

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"], desc="run_mlm tokenize")
    tokenized_at = time.perf_counter()

    def group_texts(examples):
        joined = {k: list(itertools.chain(*examples[k])) for k in examples}
        usable = (len(joined["input_ids"]) // max_seq_length) * max_seq_length
        return {k: [v[i : i + max_seq_length] for i in range(0, usable, max_seq_length)] for k, v in joined.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc, desc="run_mlm group_texts")
    done = time.perf_counter()
    rows = len(grouped["train"])
    return {"seconds": done - started, "load_s": loaded - started, "tokenize_s": tokenized_at - loaded,
            "pack_s": done - tokenized_at, "rows": rows, "tokens": rows * max_seq_length,
            "columns": grouped["train"].column_names}


def hfssl_recipe(corpus: Path, tokenizer, num_proc: int, max_seq_length: int, output_dir: Path) -> dict:
    started = time.perf_counter()
    cfg = MLMConfig(train_file=str(corpus), validation_split_percentage=0, max_seq_length=max_seq_length,
                    preprocessing_num_workers=num_proc, output_dir=str(output_dir))
    raw = load_text_datasets(cfg)
    loaded = time.perf_counter()
    prepared = prepare_text_splits(cfg, tokenizer, raw)
    done = time.perf_counter()
    import pyarrow.compute as pc

    tokens = sum(int(pc.sum(pc.list_value_length(c)).as_py()) for c in prepared.train.data.column("input_ids").chunks)
    return {"seconds": done - started, "load_s": loaded - started, "prepare_s": done - loaded, "rows": len(prepared.train),
            "tokens": tokens, "summary": prepared.summary}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished workers (datasets joins its pool after each map)."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def measured(fn, *args) -> dict:
    load, cpu = os.getloadavg()[0], _cpu_seconds()
    with PeakMemory() as mem:
        result = fn(*args)
    result.update(peak_pss_mb=mem.peak_pss / MB, peak_rss_mb=mem.peak_rss / MB, start_pss_mb=mem.start_pss / MB,
                  cpu_s=_cpu_seconds() - cpu, load_average_1min=[load, os.getloadavg()[0]])
    return result


def bench_size(size_mb: int, args, tokenizer, work: Path) -> dict:
    corpus = work / f"corpus-{size_mb}mb.txt"
    info = generate_corpus(corpus, int(size_mb * MB), args.seed)
    with open(corpus, "rb") as f:  # warm the page cache for both sides
        while f.read(1 << 24):
            pass
    print(f"\n== {size_mb} MB: {info['documents']:,} documents, {info['bytes'] / MB:.1f} MB", flush=True)
    out = {"corpus": info}
    _use_cache(work / f"cache-hfssl-{size_mb}")
    out["hfssl"] = measured(hfssl_recipe, corpus, tokenizer, args.num_proc, args.max_seq_length, work / "out")
    out["hfssl_second_run"] = measured(hfssl_recipe, corpus, tokenizer, args.num_proc, args.max_seq_length, work / "out")
    _use_cache(work / f"cache-run_mlm-{size_mb}")
    out["run_mlm"] = measured(run_mlm_recipe, corpus, tokenizer, args.num_proc, args.max_seq_length)
    out["run_mlm_second_run"] = measured(run_mlm_recipe, corpus, tokenizer, args.num_proc, args.max_seq_length)
    for side in ("hfssl", "run_mlm", "hfssl_second_run", "run_mlm_second_run"):
        r = out[side]
        r["mb_per_s"] = info["bytes"] / MB / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tokens_per_cpu_s"] = r["tokens"] / max(r["cpu_s"], 1e-9)
    out["ratios_hfssl_over_run_mlm"] = {
        "mb_per_s": out["hfssl"]["mb_per_s"] / out["run_mlm"]["mb_per_s"],
        "tokens_per_s": out["hfssl"]["tokens_per_s"] / out["run_mlm"]["tokens_per_s"],
        "tokens_per_cpu_s": out["hfssl"]["tokens_per_cpu_s"] / out["run_mlm"]["tokens_per_cpu_s"],
        "peak_pss": out["hfssl"]["peak_pss_mb"] / out["run_mlm"]["peak_pss_mb"]}
    out["hfssl_second_run_share_of_first"] = out["hfssl_second_run"]["seconds"] / out["hfssl"]["seconds"]
    out["disk_mb"] = {name: _du(work / f"cache-{name}-{size_mb}") / MB for name in ("hfssl", "run_mlm")}
    print(json.dumps({k: v for k, v in out.items() if k != "corpus"}, indent=1, default=str), flush=True)
    for name in ("hfssl", "run_mlm"):
        shutil.rmtree(work / f"cache-{name}-{size_mb}", ignore_errors=True)
    corpus.unlink()
    return out


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000], help="corpus sizes in MB")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/hfssl-bench-text")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/text_prep_<date>.json)")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    datasets.disable_progress_bars()
    load_before = os.getloadavg()
    started = time.perf_counter()
    sample = gzip.open(REPO / "benchmarks" / "payoff" / "data" / "corpus.txt.gz", "rt", encoding="utf-8").read().splitlines()
    tokenizer = train_tokenizer(sample[:30000] + builtin_corpus(), "wordpiece", args.vocab_size)
    print(f"tokenizer: WordPiece {len(tokenizer)} tokens, trained in {time.perf_counter() - started:.0f} s", flush=True)
    results = {}
    try:
        for size in args.sizes:
            results[f"{size}MB"] = bench_size(size, args, tokenizer, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = [f"{s}MB" for s in args.sizes]
    growth = None
    if len(sizes) > 1:
        growth = {side: results[sizes[-1]][side]["peak_pss_mb"] / results[sizes[0]][side]["peak_pss_mb"] for side in ("hfssl", "run_mlm")}
    report = {
        "benchmark": "text_prep", "date": datetime.date.today().isoformat(), "results": results,
        "peak_pss_growth_largest_over_smallest": growth,
        "settings": {"num_proc": args.num_proc, "max_seq_length": args.max_seq_length, "tokenizer": f"WordPiece {len(tokenizer)}",
                     "seed": args.seed, "TOKENIZERS_PARALLELISM": os.environ["TOKENIZERS_PARALLELISM"]},
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "memory_gb": psutil.virtual_memory().total / 1e9, "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": {"datasets": datasets.__version__, "transformers": transformers.__version__,
                     "tokenizers": __import__("tokenizers").__version__, "numpy": np.__version__},
        "process_ru_maxrss_mb": {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                                 "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3},
        "total_seconds": time.perf_counter() - started,
    }
    path = Path(args.output or REPO / "benchmarks" / "results" / f"text_prep_{report['date']}.json")
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
