"""benchmarks/payoff/make_speech_dataset.py: its voice pools are disjoint (the test voices are never heard in
training), deterministic for a seed, and its sentence source yields plain-word text. No synthesis here."""

import importlib.util
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("make_speech_dataset", ROOT / "benchmarks/payoff/make_speech_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_pools_are_disjoint_by_variant_and_seeded():
    m = _module()
    pools = [set(m.TRAIN_VARIANTS), set(m.VALIDATION_VARIANTS), set(m.TEST_VARIANTS)]
    assert not pools[0] & pools[1] and not pools[0] & pools[2] and not pools[1] & pools[2]
    a = m.make_voices(m.TEST_VARIANTS, 3, random.Random(0))
    b = m.make_voices(m.TEST_VARIANTS, 3, random.Random(0))
    assert a == b and len(a) == 3 * len(m.TEST_VARIANTS) and len({v.name for v in a}) == len(a)
    train = m.make_voices(m.TRAIN_VARIANTS, 3, random.Random(0))
    variant = lambda v: v.voice.split("+")[-1]  # noqa: E731 - espeak "accent+variant" or the flite voice
    assert not {variant(v) for v in train} & {variant(v) for v in a}
    for v in a + train:
        if v.engine == "espeak":
            assert 20 <= v.pitch <= 80 and 130 <= v.rate <= 190
        else:
            assert 0.85 <= v.rate <= 1.2


def test_sentences_are_plain_words():
    texts = _module().sentences()
    assert len(texts) > 200  # enough for the 20-minute default corpus (~3.2 s per sentence)
    assert len({t.lower() for t in texts}) == len(texts)
    for t in texts:
        assert re.fullmatch(r"[A-Za-z][A-Za-z ,']*[.]?", t) and 5 <= len(t.split()) <= 16
