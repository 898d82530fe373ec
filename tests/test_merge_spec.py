"""A Merge written as one word (run folders, run.json, policy maps, bench records, labels)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import futuremask as fm
from futuremask.merge_spec import MERGE_DEFAULTS, MERGE_FIELDS, merge_label, merge_spec, parse_merge_spec
from futuremask.names import MERGE_KINDS, POOLS

GRID = [fm.Merge(kind, kernel, pool, prefix)
        for kind, kernel, pool, prefix in itertools.product(MERGE_KINDS, (1, 3, 5, 12), POOLS, (1, 2, 3))]


def test_defaults_are_merges_own():
    fields = {f.name: f.default for f in dataclasses.fields(fm.Merge)}
    assert {k: fields[k] for k in MERGE_DEFAULTS} == MERGE_DEFAULTS and set(fields) == {"kind", *MERGE_DEFAULTS}


def test_the_words_written_out():
    assert merge_spec(None) is None and merge_label("future", None) == "future"
    assert [merge_spec(fm.Merge(kind)) for kind in MERGE_KINDS] == list(MERGE_KINDS)  # the old spelling
    assert merge_spec(fm.Merge("kernel", kernel=5)) == "kernel-k5"
    assert merge_spec(fm.Merge("kernel", pool="mean")) == "kernel-mean"
    assert merge_spec(fm.Merge("lse", prefix=2)) == "lse-p2"
    assert merge_spec(fm.Merge("kernel", kernel=12, pool="mean", prefix=3)) == "kernel-k12-mean-p3"
    assert merge_label("mma", fm.Merge("kernel", kernel=1)) == "mma+kernel-k1"


def test_one_word_per_merge_and_back():
    words = [merge_spec(m) for m in GRID]
    assert len(set(words)) == len(GRID)  # two merges share a word only when equal
    assert [parse_merge_spec(w) for w in words] == GRID
    assert parse_merge_spec("kernel-k3-max-p1") == fm.Merge()  # defaults written out read the same
    assert parse_merge_spec("kernel-p2-k5") == fm.Merge(kernel=5, prefix=2)
    assert parse_merge_spec(None) is parse_merge_spec("none") is parse_merge_spec("") is None


@pytest.mark.parametrize("word,message", [
    ("kernel-x5", "cannot read 'x5'"), ("kernel-k5-k6", "cannot read 'k6'"), ("kernel-max-mean", "cannot read 'mean'"),
    ("kernel-k", "cannot read 'k'"), ("lse--p2", "cannot read ''"), ("huge", "unknown merge kind"),
    ("kernel-k0", "Merge.kernel must be an integer >= 1"), (5, "written as a word"),
])
def test_unreadable_words_are_refused(word, message):
    with pytest.raises(ValueError, match=message):
        parse_merge_spec(word)


def test_each_kind_reads_exactly_its_fields():
    """MERGE_FIELDS against fm.attention: changing a field a kind reads changes the output, any other does not."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=gen) for _ in range(3))
    vis = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]]).bool()
    other = {"kernel": 1, "pool": "mean", "prefix": 2}
    for kind in MERGE_KINDS:
        base = fm.attention(q, k, v, policy="future", is_visual=vis, merge=fm.Merge(kind))
        for name, value in other.items():
            changed = fm.attention(q, k, v, policy="future", is_visual=vis, merge=fm.Merge(kind, **{name: value}))
            assert (not torch.allclose(base, changed)) == (name in MERGE_FIELDS[kind]), (kind, name)
