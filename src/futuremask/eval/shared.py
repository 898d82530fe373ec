"""Per-sample scores of runs and the samples several runs share: compare policies like with like.

A sample is keyed by ``(sample_id, fingerprint)``: its id and the hash of the inputs its prediction
was made from (recorded in the run's ``run.json``; ``None`` for runs that did not record it). Two
runs evaluated on different data (another ``--limit``, an edited task file) share only the samples
whose keys agree, and a comparison over the shared keys is a paired one: the same samples, scored
once per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SampleKey = tuple[str, str | None]
"""``(sample_id as a decimal string, fingerprint or None)``."""


def id_key(sample_id: object) -> str:
    """A sample id as the decimal string of its int value (``"01"`` and ``1`` agree), else as ``str``."""
    try:
        return str(int(str(sample_id)))
    except ValueError:
        return str(sample_id)


def sample_scores(eval_score: Sequence[Mapping[str, str]], fingerprints: Mapping[str, str] | None) -> dict:
    """``{SampleKey: score}`` from an ``eval_score.json`` list and the run's ``{id: fingerprint}`` of the task."""
    prints = fingerprints or {}
    return {(id_key(rec["id"]), prints.get(id_key(rec["id"]))): float(rec["score"]) for rec in eval_score}


def shared_samples(per_run: Sequence[Mapping[SampleKey, float]]) -> list[SampleKey]:
    """The sample keys every run holds (sorted by id), for a paired comparison of one task."""
    if not per_run:
        return []
    common = set(per_run[0]).intersection(*per_run[1:])
    return sorted(common, key=lambda key: (len(key[0]), key[0], key[1] or ""))


def paired_scores(per_run: Sequence[Mapping[SampleKey, float]]) -> tuple[list[SampleKey], list[list[float]]]:
    """The shared keys and, per run, the scores of those keys in that order: ``(keys, [[float] * K] * R)``."""
    keys = shared_samples(per_run)
    return keys, [[scores[key] for key in keys] for scores in per_run]


__all__ = ["SampleKey", "id_key", "paired_scores", "sample_scores", "shared_samples"]
