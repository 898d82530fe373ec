"""MileBench's tasks, their categories and the group names users type (one list for the whole harness)."""

from __future__ import annotations

from collections.abc import Sequence

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Realistic Temporal": (
        "ActionLocalization",
        "ActionPrediction",
        "ActionSequence",
        "CharacterOrder",
        "CounterfactualInference",
        "EgocentricNavigation",
        "MovingAttribute",
        "MovingDirection",
        "ObjectExistence",
        "ObjectInteraction",
        "ObjectShuffle",
        "SceneTransition",
        "StateChange",
    ),
    "Realistic Semantic": (
        "ALFRED",
        "CLEVR-Change",
        "DocVQA",
        "IEdit",
        "MMCoQA",
        "MultiModalQA",
        "nuscenes",
        "OCR-VQA",
        "SlideVQA",
        "Spot-the-Diff",
        "TQA",
        "WebQA",
        "WikiVQA",
    ),
    "Diagnostic": ("TextNeedleInAHaystack", "ImageNeedleInAHaystack", "GPR1200"),
}
"""MileBench's 29 tasks by category, in the official ``score.py`` order."""

OTHER = "Other"
"""Category of tasks that are not part of MileBench."""

MILEBENCH_TASKS: tuple[str, ...] = tuple(task for tasks in CATEGORIES.values() for task in tasks)
TASK_GROUPS: dict[str, str] = {
    "temporal": "Realistic Temporal",
    "semantic": "Realistic Semantic",
    "diagnostic": "Diagnostic",
}
"""Group names accepted wherever tasks are chosen (``--tasks temporal``), besides ``all``."""


def category_of(task: str) -> str:
    """The category of ``task``: one of :data:`CATEGORIES`' keys, or :data:`OTHER`."""
    for category, tasks in CATEGORIES.items():
        if task in tasks:
            return category
    return OTHER


def expand_task_names(names: Sequence[str] | None, present: Sequence[str]) -> list[str]:
    """Task names with ``all`` and the groups of :data:`TASK_GROUPS` expanded, in order, without repeats.

    ``present`` are the tasks available; ``all`` (or no names) means all of them and a group means its
    present tasks. Other names are kept as given (the caller checks them).

    Raises:
        LookupError: a group has no present task.
    """
    out: list[str] = []
    for name in names or ["all"]:
        if name == "all":
            chosen = list(present)
        elif name in TASK_GROUPS:
            chosen = [t for t in CATEGORIES[TASK_GROUPS[name]] if t in present]
            if not chosen:
                raise LookupError(name)
        else:
            chosen = [name]
        out += [t for t in chosen if t not in out]
    return out
