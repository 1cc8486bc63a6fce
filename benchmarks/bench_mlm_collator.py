#!/usr/bin/env python
"""Collator throughput: hfssl's MLMCollator vs transformers' DataCollatorForLanguageModeling.

Both collators get the same packed 128-token blocks (built-in corpus, WordPiece 8192 tokenizer
trained by hfssl, packed by hfssl's `pack_blocks`), 64 examples per batch, as Python lists (the
format a `datasets.Dataset` hands to a collator by default). Each collator gets the keys it needs:

  hfssl:         input_ids (+ word_ids for whole-word / span masking)
  transformers:  input_ids + special_tokens_mask (its documented fast path)
                 (+ offset_mapping for whole_word_mask=True: transformers 5 derives words from
                 character offsets, a new word starting wherever the offsets leave a gap)

Cases:
  token        plain token masking, 0.8/0.1/0.1 [MASK]/random/unchanged on both sides.
  token_nosm   same, but transformers gets input_ids only (what `Trainer` feeds it when
               remove_unused_columns drops special_tokens_mask): it then calls
               tokenizer.get_special_tokens_mask row by row.
  whole_word   whole-word masking. transformers forces mask_replace_prob=1 (no random
               replacement) for whole words, so hfssl is configured the same (1.0/0.0) here.
  span         SpanBERT spans, hfssl only (transformers has no equivalent).

Timing: ours and theirs alternate call by call on the same batch (order flipped every
repetition), so background load hits both alike; the table shows medians and the median of the
per-repetition ratios. A sanity check prints the masked fraction of each collator.

    python benchmarks/bench_mlm_collator.py                 # ~1 min on a 2-core CPU
    python benchmarks/bench_mlm_collator.py --reps 300 --output /tmp/collator.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorForLanguageModeling  # noqa: E402

from hfssl.collators import MLMCollator  # noqa: E402
from hfssl.data.text.corpus import builtin_corpus  # noqa: E402
from hfssl.data.text.pack import pack_blocks, tokenize  # noqa: E402
from hfssl.data.text.tokenizer import train_tokenizer  # noqa: E402


# ----------------------------------------------------------------------------------- data

def build_blocks(block_size: int, vocab_size: int):
    """Tokenizer + full packed blocks with input_ids, word_ids (hfssl) and offsets / special mask (transformers).

    Returns (tokenizer, dict of (N, block_size) int64 arrays: input_ids, word_ids, special_tokens_mask,
    offset_mapping (N, block_size, 2)).
    """
    docs = builtin_corpus()
    tok = train_tokenizer(docs, "wordpiece", vocab_size)
    raw = datasets.Dataset.from_dict({"text": docs})
    tokenized = tokenize(raw, tok, with_word_ids=True)
    packed = pack_blocks(tokenized, block_size, tok.cls_token_id, tok.sep_token_id, with_word_ids=True)
    lengths = np.array([len(x) for x in packed["input_ids"]])
    full = np.flatnonzero(lengths == block_size)  # same length: no padding on either side
    ids = np.array([packed[int(i)]["input_ids"] for i in full], dtype=np.int64)
    wids = np.array([packed[int(i)]["word_ids"] for i in full], dtype=np.int64)

    # transformers' whole-word masking needs character offsets; pack them with the same layout as
    # pack_blocks (each document followed by [SEP]; blocks are [CLS] + block_size-2 tokens + [SEP]).
    enc = tok(docs, add_special_tokens=False, return_offsets_mapping=True,
              return_attention_mask=False, return_token_type_ids=False)
    stream_ids, stream_off = [], []
    for doc_ids, doc_off in zip(enc["input_ids"], enc["offset_mapping"]):
        stream_ids.extend(doc_ids)
        stream_off.extend(doc_off)
        stream_ids.append(tok.sep_token_id)
        stream_off.append((0, 0))
    body = block_size - 2
    n = len(full)
    s_ids = np.array(stream_ids[: n * body], dtype=np.int64).reshape(n, body)
    s_off = np.array(stream_off[: n * body], dtype=np.int64).reshape(n, body, 2)
    cls = np.full((n, 1), tok.cls_token_id)
    sep = np.full((n, 1), tok.sep_token_id)
    check = np.concatenate([cls, s_ids, sep], axis=1)
    if not np.array_equal(check, ids):
        raise RuntimeError("offset packing does not line up with hfssl's pack_blocks")
    zeros = np.zeros((n, 1, 2), dtype=np.int64)
    offsets = np.concatenate([zeros, s_off, zeros], axis=1)
    special = np.isin(ids, np.array(tok.all_special_ids)).astype(np.int64)
    return tok, {"input_ids": ids, "word_ids": wids, "special_tokens_mask": special, "offset_mapping": offsets}


def make_batches(blocks: dict, batch_size: int, n_batches: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(blocks["input_ids"]))
    n_batches = min(n_batches, len(order) // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def examples(blocks: dict, rows: np.ndarray, keys: tuple[str, ...]) -> list[dict]:
    """Python-list examples (what datasets hands a collator by default)."""
    out = []
    for r in rows:
        ex = {}
        for k in keys:
            v = blocks[k][r]
            ex[k] = [tuple(p) for p in v.tolist()] if k == "offset_mapping" else v.tolist()
        out.append(ex)
    return out


def word_definitions(blocks: dict) -> dict:
    """Average word length in tokens under each collator's notion of a word.

    hfssl uses the tokenizer's word_ids (the pre-tokenizer splits punctuation off: "os.path" is 3
    words); transformers 5 starts a word only where character offsets leave a gap (whitespace), so
    "os.path" or "phased-in" is one word. Same masking rate per word, different word sizes.
    """
    from hfssl.masking import word_starts

    wids = torch.as_tensor(blocks["word_ids"])
    in_word = int((wids >= 0).sum())
    ours_words = int(word_starts(wids).sum())
    # Private helper, imported here as the reference (benchmarks may; product code must not).
    _, prob_mask = DataCollatorForLanguageModeling._calc_word_ids_and_prob_mask(
        blocks["offset_mapping"], blocks["special_tokens_mask"])
    hf_words = int((~prob_mask).sum())
    return {"tokens_in_words": in_word, "ours_words": ours_words, "hf_words": hf_words,
            "ours_tokens_per_word": in_word / ours_words, "hf_tokens_per_word": in_word / hf_words}


# ----------------------------------------------------------------------------------- cases

def make_cases(tok, mlm_probability: float):
    """name -> (ours callable, ours keys, theirs callable or None, theirs keys, note)."""
    def ours(strategy, **kw):
        c = MLMCollator.from_tokenizer(tok, mlm_probability=mlm_probability, mask_strategy=strategy, **kw)
        return lambda exs, seed: c(exs, seed=seed, progress=0.0)

    def theirs(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # whole_word_mask warns that it forces mask_replace_prob=1
            c = DataCollatorForLanguageModeling(tok, mlm_probability=mlm_probability, seed=0, **kw)
        return lambda exs, seed: c(exs)

    ww_repl = dict(mask_replace_prob=1.0, random_replace_prob=0.0)
    return {
        "token": (ours("token"), ("input_ids",), theirs(), ("input_ids", "special_tokens_mask"),
                  "0.8/0.1/0.1 both; HF given special_tokens_mask"),
        "token_nosm": (ours("token"), ("input_ids",), theirs(), ("input_ids",),
                       "HF given input_ids only (get_special_tokens_mask per row)"),
        "whole_word": (ours("whole_word", **ww_repl), ("input_ids", "word_ids"),
                       theirs(whole_word_mask=True), ("input_ids", "special_tokens_mask", "offset_mapping"),
                       "1.0/0/0 both (HF forces it for whole words)"),
        "span": (ours("span"), ("input_ids", "word_ids"), None, (), "hfssl only"),
    }


def masked_stats(batch: dict, special: torch.Tensor, mask_id: int) -> dict:
    labels = batch["labels"]
    real = ~special
    if "attention_mask" in batch:
        real &= batch["attention_mask"].bool()
    selected = labels != -100
    n_sel = int(selected.sum())
    return {
        "selected": n_sel,
        "candidates": int(real.sum()),
        "selected_special": int((selected & special).sum()),
        "as_mask_token": int((selected & (batch["input_ids"] == mask_id)).sum()),
    }


def run_case(name, case, blocks, batches, tok, reps: int, warmup: int) -> dict:
    f_ours, k_ours, f_hf, k_hf, note = case
    special_ids = torch.tensor(sorted(set(tok.all_special_ids)))
    ex_ours = [examples(blocks, b, k_ours) for b in batches]
    ex_hf = [examples(blocks, b, k_hf) for b in batches] if f_hf else None
    sides = {"ours": (f_ours, ex_ours)}
    if f_hf:
        sides["hf"] = (f_hf, ex_hf)

    # Sanity: masked fraction over every batch once (also the warm-up).
    stats = {s: {"selected": 0, "candidates": 0, "selected_special": 0, "as_mask_token": 0} for s in sides}
    for i in range(len(batches)):
        ids = torch.as_tensor(blocks["input_ids"][batches[i]])
        special = torch.isin(ids, special_ids)
        for s, (f, exs) in sides.items():
            out = f(exs[i], 10_000 + i)
            if not torch.equal(out["labels"] != -100, (out["labels"] != -100) & ~special) or out["input_ids"].shape != ids.shape:
                raise RuntimeError(f"{name}/{s}: selected a special token or changed the shape")
            for k, v in masked_stats(out, special, tok.mask_token_id).items():
                stats[s][k] += v
    for _ in range(warmup):
        for s, (f, exs) in sides.items():
            f(exs[0], 0)

    times = {s: [] for s in sides}
    for r in range(reps):
        i = r % len(batches)
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for s in order:
            f, exs = sides[s]
            t0 = time.perf_counter()
            f(exs[i], r)
            times[s].append(time.perf_counter() - t0)

    result = {"note": note, "keys": {"ours": list(k_ours), "hf": list(k_hf)}}
    for s in sides:
        ms = np.array(times[s]) * 1e3
        st = stats[s]
        result[s] = {
            "ms_per_batch_median": float(np.median(ms)),
            "ms_per_batch_p10": float(np.percentile(ms, 10)),
            "ms_per_batch_p90": float(np.percentile(ms, 90)),
            "batches_per_s": float(1e3 / np.median(ms)),
            "masked_fraction": st["selected"] / st["candidates"],
            "mask_token_share": st["as_mask_token"] / max(st["selected"], 1),
        }
    if f_hf:
        paired = np.array(times["ours"]) / np.array(times["hf"])
        result["ratio_time_ours_over_hf"] = result["ours"]["ms_per_batch_median"] / result["hf"]["ms_per_batch_median"]
        result["ratio_time_paired_median"] = float(np.median(paired))
    return result


# ----------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--reps", type=int, default=150, help="timed calls per collator and case")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--n_batches", type=int, default=20, help="distinct batches cycled through")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave torch's default)")
    p.add_argument("--cases", default="token,token_nosm,whole_word,span")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/mlm_collator_<date>.json)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    tok, blocks = build_blocks(args.block_size, args.vocab_size)
    batches = make_batches(blocks, args.batch_size, args.n_batches, seed=0)
    prep_s = time.perf_counter() - t0
    print(f"data: {len(blocks['input_ids'])} full {args.block_size}-token blocks, {len(batches)} batches of "
          f"{args.batch_size}, prepared in {prep_s:.1f}s; torch threads {torch.get_num_threads()}, load {load_before[0]:.2f}")

    words = word_definitions(blocks)
    print(f"words: hfssl (tokenizer word_ids) {words['ours_tokens_per_word']:.2f} tokens/word, transformers "
          f"(offset gaps) {words['hf_tokens_per_word']:.2f} tokens/word")
    cases = make_cases(tok, args.mlm_probability)
    results = {}
    for name in args.cases.split(","):
        results[name] = run_case(name, cases[name], blocks, batches, tok, args.reps, args.warmup)

    load_after = os.getloadavg()
    print()
    print(f"{'case':<11} {'side':<5} {'ms/batch':>9} {'p10-p90':>13} {'batch/s':>8} {'masked':>7} {'[MASK]':>7} {'ours/HF':>8} {'paired':>7}")
    for name, r in results.items():
        for s in ("ours", "hf"):
            if s not in r:
                continue
            x = r[s]
            ratio = f"{r['ratio_time_ours_over_hf']:.3f}" if s == "ours" and "hf" in r else ""
            paired = f"{r['ratio_time_paired_median']:.3f}" if s == "ours" and "hf" in r else ""
            print(f"{name:<11} {s:<5} {x['ms_per_batch_median']:>9.2f} {x['ms_per_batch_p10']:>6.2f}-{x['ms_per_batch_p90']:<6.2f} "
                  f"{x['batches_per_s']:>8.1f} {x['masked_fraction']:>7.3f} {x['mask_token_share']:>7.3f} {ratio:>8} {paired:>7}")
    print("\nms/batch: median over reps; ours/HF: ratio of medians (time, <1 means hfssl is faster); "
          "paired: median of per-rep time ratios.\nmasked: fraction of non-special tokens selected for "
          "prediction; [MASK]: share of those replaced by the mask token.")
    for name, r in results.items():
        if "hf" in r and abs(r["ours"]["masked_fraction"] - r["hf"]["masked_fraction"]) > 0.02:
            print(f"WARNING {name}: masked fractions differ ({r['ours']['masked_fraction']:.3f} vs {r['hf']['masked_fraction']:.3f})")

    date = datetime.date.today().isoformat()
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"mlm_collator_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "mlm_collator", "date": date, "args": vars(args),
        "env": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                "loadavg_before": load_before, "loadavg_after": load_after},
        "word_definitions": words,
        "data": {"blocks": int(len(blocks["input_ids"])), "batches": len(batches)},
        "results": results,
    }, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
