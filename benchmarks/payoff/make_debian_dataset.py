#!/usr/bin/env python
"""Build the offline "did pretraining pay off?" dataset from Debian's package descriptions.

Real English text with real topic labels, available on any Debian/Ubuntu machine without a model
or dataset hub: `apt-cache dumpavail` lists every package's description and archive section.

Writes (to --out, default benchmarks/payoff/data/):
  corpus.txt.gz   unlabeled pretraining text: every description NOT in the labeled splits
  train.csv       text,label: --per_class labeled examples for each of 10 sections
  test.csv        text,label: --test_per_class held-out examples per section
Descriptions are deduplicated (many packages share boilerplate), and the labeled splits never
appear in the pretraining corpus.

  apt-get update -o Acquire::Languages=en && python benchmarks/payoff/make_debian_dataset.py
"""

import argparse
import csv
import gzip
import random
import subprocess
from collections import defaultdict
from pathlib import Path

SECTIONS = ["admin", "fonts", "games", "graphics", "math", "net", "science", "sound", "text", "web"]


def _stanzas(text: str):
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            yield fields


def read_packages() -> list[tuple[str, str]]:
    """(section, long description) for every available package.

    Sections come from `apt-cache dumpavail`; long descriptions from the Translation-en index
    (fetched by `apt-get update -o Acquire::Languages=en`), joined on Description-md5.
    """
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    long_desc = {}
    for path in sorted(Path("/var/lib/apt/lists").glob("*Translation-en*")):
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True, text=True, check=True).stdout
        for f in _stanzas(text):
            if "Description-md5" in f and "Description-en" in f:
                long_desc[f["Description-md5"]] = f["Description-en"]
    if not long_desc:
        raise SystemExit("No Translation-en index: run `apt-get update -o Acquire::Languages=en` first.")
    out = []
    for f in _stanzas(dump):
        desc = long_desc.get(f.get("Description-md5", ""))
        if "Section" not in f or not desc:
            continue
        lines = [l.strip() for l in desc.splitlines()]
        text = " ".join(" ".join(l for l in lines if l != ".").split())
        if len(text) >= 80:
            out.append((f["Section"].split("/")[-1], text))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "data"))
    ap.add_argument("--per_class", type=int, default=32)
    ap.add_argument("--test_per_class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seen, by_section, corpus = set(), defaultdict(list), []
    for section, text in read_packages():
        if text in seen:
            continue
        seen.add(text)
        by_section[section].append(text)
    train, test = [], []
    for section in SECTIONS:
        texts = sorted(by_section[section])
        rng.shuffle(texts)
        n_train, n_test = args.per_class, args.test_per_class
        train += [(t, section) for t in texts[:n_train]]
        test += [(t, section) for t in texts[n_train:n_train + n_test]]
        by_section[section] = texts[n_train + n_test:]
    for section in sorted(by_section):
        corpus += by_section[section]
    rng.shuffle(corpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "corpus.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")
    for name, rows in (("train.csv", train), ("test.csv", test)):
        rng.shuffle(rows)
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
    print(f"corpus: {len(corpus)} descriptions, {sum(map(len, corpus)) / 1e6:.1f} MB; train {len(train)}, test {len(test)}")


if __name__ == "__main__":
    main()
