#!/usr/bin/env python
"""Build the offline speech "did pretraining pay off?" dataset: synthesized English with many voices and
speaker-disjoint splits, so the downstream test measures generalization to voices never heard in training.

No recordings, hub or network: every clip is synthesized here with espeak-ng (8 English accents x many
voice variants, each with its own pitch and speaking rate) and flite (5 voices, own pitch/rate), then trimmed
and resampled with sox to 16 kHz mono 16-bit FLAC (the same pipeline as tests/fixtures/make_speech_fixtures.py).

Voices are split by *variant* (the espeak-ng voice variant / flite voice), not just by pitch or rate, so a
test voice differs from every training voice in timbre, not only in a setting:
  pool "train"       unlabeled corpus + labeled training clips   (voice variants listed in TRAIN_VARIANTS)
  pool "validation"  labeled validation clips (learning-rate choice only)      (VALIDATION_VARIANTS)
  pool "test"        labeled test clips, never seen before testing              (TEST_VARIANTS)

Writes (to --out, default benchmarks/payoff/speech_data/, git-ignored):
  unlabeled/<voice>/utt_NNNN.flac          sentences for pretraining (train-pool voices; no labels)
  keywords/{train,validation,test}/<keyword>/<voice>.flac   10 keywords, audio classification
  digits/{train,validation,test}/*.flac + metadata.csv     spoken digit strings, CTC (file_name,transcription)
  README.md                                counts, durations, size, voices, tool versions

Sentences for the unlabeled corpus are the first sentences of docstrings of a fixed list of Python standard
library modules (local text, no download), filtered to 5-16 plain words; they are deterministic for one
Python version (the README records it). Everything else is seeded (--seed).

  apt-get install -y espeak-ng flite sox && python benchmarks/payoff/make_speech_dataset.py
Measured (2026-12-02, busy 2-core CPU): see the README it writes for size and run time.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One synthesis recipe for the test fixtures and this set: the same engines, sox trimming and 50 ms padding.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.make_speech_fixtures import Voice, synthesize  # noqa: E402

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # Speech Commands' 10
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd")
# espeak-ng variants (timbre/formant presets) and flite voices, split into disjoint pools.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "Andy", "Annie", "Alex", "Denis",
                  "flite:kal", "flite:awb")
VALIDATION_VARIANTS = ("m5", "f4", "klatt2", "Gene", "flite:rms")
TEST_VARIANTS = ("m6", "m7", "f5", "klatt3", "Michael", "Linda", "flite:slt", "flite:kal16")
# First-sentence sources for the unlabeled corpus (stdlib only: present wherever Python is).
DOC_MODULES = ("argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
               "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
               "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "html",
               "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox",
               "mimetypes", "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
               "secrets", "shelve", "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
               "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback",
               "turtle", "typing", "unittest", "urllib.parse", "uuid", "wave", "weakref", "xml.dom.minidom",
               "zipfile", "zoneinfo")


def make_voices(variants: tuple[str, ...], per_variant: int, rng: random.Random) -> list[Voice]:
    """`per_variant` voices per variant, each with its own accent (espeak), pitch and rate drawn from `rng`."""
    voices = []
    for variant in variants:
        for k in range(per_variant):
            if variant.startswith("flite:"):
                name = variant.split(":")[1]
                base_f0 = {"kal": 105, "awb": 115, "rms": 95, "slt": 170, "kal16": 110}[name]
                pitch = round(base_f0 * rng.uniform(0.85, 1.2))
                rate = round(rng.uniform(0.85, 1.2), 2)
                voices.append(Voice(f"flite-{name}-{k}", "flite", name, rate, pitch))
            else:
                accent = rng.choice(ESPEAK_ACCENTS)
                pitch, rate = rng.randint(20, 80), rng.randint(130, 190)
                voices.append(Voice(f"{accent}+{variant}-{k}", "espeak", f"{accent}+{variant}", rate, pitch))
    return voices


def sentences(min_words: int = 5, max_words: int = 16) -> list[str]:
    """Deduplicated first sentences of the docstrings (module, classes, functions) of DOC_MODULES, in a
    fixed order, keeping only plain-word sentences that a TTS engine reads naturally."""
    seen, out = set(), []
    for mod_name in DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # e.g. turtle without tkinter: skip, the README records the count
            continue
        objs = [mod] + [obj for _, obj in sorted(vars(mod).items()) if inspect.isclass(obj) or inspect.isfunction(obj)]
        for obj in objs:
            doc = inspect.getdoc(obj) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            first = re.split(r"(?<=[.!?])\s", first)[0]
            if not re.fullmatch(r"[A-Za-z][A-Za-z ,']*[.]?", first):
                continue
            n = len(first.split())
            if min_words <= n <= max_words and first.lower() not in seen:
                seen.add(first.lower())
                out.append(first)
    return out


def make_unlabeled(out: Path, tmp: Path, voices: list[Voice], texts: list[str], seconds: float,
                   rng: random.Random) -> list[float]:
    """Sentences (shuffled) spoken by voices drawn at random from the train pool until `seconds` of audio.

    Past one pass over the sentences (about 30 minutes), every further pass reshuffles them and draws the voices
    again, so more minutes means the same texts in more voices; the first pass is the same for any `seconds`."""
    if not texts:
        raise ValueError("no sentences to speak")
    durations, i = [], 0
    while sum(durations) < seconds:
        order = texts[:]
        rng.shuffle(order)
        for text in order:
            if sum(durations) >= seconds:
                break
            voice = rng.choice(voices)
            durations.append(synthesize(text, voice, out / "unlabeled" / voice.name / f"utt_{i:04d}.flac", tmp))
            i += 1
    return durations


def make_keywords(out: Path, tmp: Path, split: str, voices: list[Voice]) -> list[float]:
    return [synthesize(word, v, out / "keywords" / split / word / f"{v.name}.flac", tmp)
            for word in KEYWORDS for v in voices]


def make_digits(out: Path, tmp: Path, split: str, voices: list[Voice], n: int, rng: random.Random) -> list[float]:
    durations, rows = [], []
    for i in range(n):
        text = " ".join(rng.choice(DIGIT_WORDS) for _ in range(rng.randint(2, 5)))
        voice = voices[i % len(voices)]
        name = f"{voice.name}_{i:04d}.flac"
        durations.append(synthesize(text, voice, out / "digits" / split / name, tmp))
        rows.append((name, text))
    with open(out / "digits" / split / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", "transcription"])
        writer.writerows(rows)
    return durations


def _version(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()), "unknown")
    return " ".join(line.split("Data at:")[0].split())


def write_readme(out: Path, args, stats: dict, pools: dict, n_sentences: int, seconds: float) -> None:
    size_mb = sum(p.stat().st_size for p in out.rglob("*.flac")) / 1e6
    rows = "\n".join(f"| {k} | {len(d)} | {min(d):.2f} | {max(d):.2f} | {sum(d) / 60:.1f} |" for k, d in stats.items())
    voice_rows = "\n".join(f"| {pool} | {len(vs)} | {', '.join(sorted({v.voice.split('+')[-1] for v in vs}))} |"
                           for pool, vs in pools.items())
    (out / "README.md").write_text(f"""# Offline speech payoff data (generated, not committed)

Made by `python benchmarks/payoff/make_speech_dataset.py --seed {args.seed} --unlabeled_minutes {args.unlabeled_minutes:g}`
in {seconds:.0f} s. All clips: 16 kHz mono 16-bit FLAC, silence trimmed to 50 ms. Size {size_mb:.1f} MB.
Tools: {_version(["espeak-ng", "--version"])}; flite {_version(["flite", "--version"])}; {_version(["sox", "--version"])};
Python {sys.version.split()[0]} ({n_sentences} docstring sentences available).

| set | clips | min s | max s | total min |
| --- | ---: | ---: | ---: | ---: |
{rows}

Voice pools (disjoint by variant; each voice also has its own accent, pitch and rate):

| pool | voices | variants |
| --- | ---: | --- |
{voice_rows}
""")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "speech_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unlabeled_minutes", type=float, default=20.0)
    parser.add_argument("--voices_per_variant", type=int, default=3, help="train/validation/test voices per variant")
    parser.add_argument("--digits_train", type=int, default=300)
    parser.add_argument("--digits_eval", type=int, default=60, help="digit strings in validation and in test each")
    args = parser.parse_args(argv)
    missing = [t for t in ("espeak-ng", "flite", "sox", "soxi") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {missing}; apt-get install -y espeak-ng flite sox", file=sys.stderr)
        return 1
    start = time.perf_counter()
    rng = random.Random(args.seed)
    pools = {"train": make_voices(TRAIN_VARIANTS, args.voices_per_variant, rng),
             "validation": make_voices(VALIDATION_VARIANTS, args.voices_per_variant, rng),
             "test": make_voices(TEST_VARIANTS, args.voices_per_variant, rng)}
    # The unlabeled corpus uses its own voices from the train variants (not the labeled clips' voices).
    unlabeled_voices = make_voices(TRAIN_VARIANTS, 4, rng)
    texts = sentences()
    for sub in ("unlabeled", "keywords", "digits"):
        shutil.rmtree(args.out / sub, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stats = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stats["unlabeled"] = make_unlabeled(args.out, tmp, unlabeled_voices, texts, args.unlabeled_minutes * 60, rng)
        for split, voices in pools.items():
            stats[f"keywords/{split}"] = make_keywords(args.out, tmp, split, voices)
        for split, voices in pools.items():
            n = args.digits_train if split == "train" else args.digits_eval
            stats[f"digits/{split}"] = make_digits(args.out, tmp, split, voices, n, rng)
    pools["unlabeled"] = unlabeled_voices
    seconds = time.perf_counter() - start
    write_readme(args.out, args, stats, pools, len(texts), seconds)
    for name, d in stats.items():
        print(f"{name}: {len(d)} clips, {min(d):.2f}-{max(d):.2f} s, total {sum(d) / 60:.1f} min")
    print(f"done in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
