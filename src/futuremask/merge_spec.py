"""A :class:`~futuremask.merge.Merge` written as one word, for run names, records and labels.

The word is the kind followed by each field that differs from its default, in a fixed order:
``-k<kernel>``, ``-<pool>``, ``-p<prefix>``. So ``Merge("kernel")`` is ``kernel`` (the spelling run
folders, ``run.json``, ``policy_map.json`` and bench records had before windows could be chosen),
``Merge("kernel", kernel=5, pool="mean")`` is ``kernel-k5-mean`` and ``Merge("lse", prefix=2)`` is
``lse-p2``. Two merges have the same word exactly when they are equal. Torch-free (reports use it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .names import MERGE_KINDS, POOLS

if TYPE_CHECKING:
    from .merge import Merge

MERGE_DEFAULTS = {"kernel": 3, "pool": "max", "prefix": 1}
"""The :class:`~futuremask.merge.Merge` fields besides ``kind`` and their defaults (a test holds them equal)."""

MERGE_FIELDS = {"kernel": ("kernel", "pool", "prefix"), "lse": ("prefix",)}
"""The fields each kind reads: ``lse`` folds every future key, with no window and no pooling (a test holds this)."""

_NUMBER = re.compile(r"([kp])([0-9]+)")
_FIELD = {"k": "kernel", "p": "prefix"}


def merge_spec(merge: Merge | None) -> str | None:
    """The one-word spelling of ``merge`` (module docstring); None for no merge."""
    if merge is None:
        return None
    word = merge.kind
    if merge.kernel != MERGE_DEFAULTS["kernel"]:
        word += f"-k{merge.kernel}"
    if merge.pool != MERGE_DEFAULTS["pool"]:
        word += f"-{merge.pool}"
    if merge.prefix != MERGE_DEFAULTS["prefix"]:
        word += f"-p{merge.prefix}"
    return word


def parse_merge_spec(word: str | None) -> Merge | None:
    """The :class:`~futuremask.merge.Merge` a :func:`merge_spec` word names; None for None, ``""`` or ``"none"``.

    Raises:
        ValueError: for a word that is not a kind followed by ``-k<N>``, ``-<pool>``, ``-p<N>``.
    """
    from .merge import Merge

    if word in (None, "", "none"):
        return None
    if not isinstance(word, str):
        raise ValueError(f"a merge is written as a word such as 'kernel' or 'kernel-k5-mean-p2'; got {word!r}")
    kind, *parts = word.split("-")
    fields: dict[str, int | str] = {}
    for part in parts:
        number = _NUMBER.fullmatch(part)
        if part in POOLS:
            name, value = "pool", part
        else:
            name, value = (_FIELD[number[1]], int(number[2])) if number else (None, None)
        if name is None or name in fields:
            raise ValueError(f"merge {word!r}: cannot read {part!r}; write {'|'.join(MERGE_KINDS)} followed by "
                             f"-k<window>, -<{'|'.join(POOLS)}>, -p<prefix> (each at most once), e.g. kernel-k5-mean-p2")
        fields[name] = value
    return Merge(kind=kind, **fields)


def merge_label(policy: str, merge: Merge | None) -> str:
    """``policy`` or ``policy+<merge word>``: how reports, tune and bench name a (policy, merge) pair."""
    return f"{policy}+{merge_spec(merge)}" if merge is not None else policy


__all__ = ["MERGE_DEFAULTS", "MERGE_FIELDS", "merge_label", "merge_spec", "parse_merge_spec"]
