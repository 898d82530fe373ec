"""The paper's headline MileBench numbers (LLaVA-1.5-7B, Table 4), as reference rows for reports.

Scores are fractions in [0, 1] (accuracy, or ROUGE-L F where :data:`PAPER_COLUMNS` says so), keyed by
the paper's own column labels. The labels ``Moving`` and ``Object`` do not say which MileBench task
they stand for (MovingAttribute or MovingDirection; ObjectExistence, ObjectInteraction or
ObjectShuffle), so they are kept as published and not mapped to a task.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_MODEL = "LLaVA-1.5-7B"
PAPER_SOURCE = "Table 4 of 'Rethinking Causal Mask Attention for Vision-Language Inference'"


@dataclass(frozen=True)
class PaperColumn:
    """One column of the paper's table: its label, the MileBench task (when unambiguous), the metric."""

    label: str
    task: str | None
    metric: str


PAPER_COLUMNS: tuple[PaperColumn, ...] = (
    PaperColumn("ActionL", "ActionLocalization", "Accuracy"),
    PaperColumn("ActionP", "ActionPrediction", "Accuracy"),
    PaperColumn("ActionS", "ActionSequence", "Accuracy"),
    PaperColumn("CLEVR", "CLEVR-Change", "Rouge-L f"),
    PaperColumn("Order", "CharacterOrder", "Accuracy"),
    PaperColumn("DocVQA", "DocVQA", "Accuracy"),
    PaperColumn("Nav", "EgocentricNavigation", "Accuracy"),
    PaperColumn("Moving", None, "Accuracy"),
    PaperColumn("OCRVQA", "OCR-VQA", "Accuracy"),
    PaperColumn("Object", None, "Accuracy"),
    PaperColumn("SpotDiff", "Spot-the-Diff", "Rouge-L f"),
    PaperColumn("State", "StateChange", "Accuracy"),
    PaperColumn("TQA", "TQA", "Accuracy"),
)

_ROWS: dict[str, tuple[float, ...]] = {
    # ActionL ActionP ActionS CLEVR Order DocVQA Nav Moving OCRVQA Object SpotDiff State TQA
    "causal": (0.230, 0.515, 0.445, 0.166, 0.245, 0.450, 0.310, 0.490, 0.225, 0.485, 0.162, 0.300, 0.320),
    "future": (0.250, 0.500, 0.450, 0.187, 0.255, 0.430, 0.320, 0.505, 0.225, 0.505, 0.171, 0.315, 0.400),
    "future_v2v": (0.255, 0.515, 0.440, 0.177, 0.250, 0.430, 0.325, 0.515, 0.220, 0.500, 0.167, 0.325, 0.385),
    "future_v2t": (0.250, 0.495, 0.435, 0.181, 0.250, 0.445, 0.320, 0.490, 0.230, 0.495, 0.165, 0.305, 0.385),
}

PAPER_SCORES: dict[str, dict[str, float]] = {
    policy: {column.label: value for column, value in zip(PAPER_COLUMNS, values, strict=True)}
    for policy, values in _ROWS.items()
}
"""``{policy: {column label: score in [0, 1]}}`` for causal, future, future_v2v and future_v2t."""

PAPER_LATENCY_MS_PER_TOKEN: dict[str, float] = {"future": 83.18, "future_v2v": 64.13, "future_v2t": 43.04}
"""Decoding latency of the full-mask variants (LLaVA-7B, 4096 context); with the light merge all three
are about 26.1-26.5 ms/token."""


def paper_row_label(column: PaperColumn) -> str:
    """Row label for reports: ``"ActionL (ActionLocalization)"``, or the bare label when unmapped."""
    return f"{column.label} ({column.task})" if column.task else f"{column.label} (task unspecified)"


__all__ = [
    "PAPER_COLUMNS",
    "PAPER_LATENCY_MS_PER_TOKEN",
    "PAPER_MODEL",
    "PAPER_SCORES",
    "PAPER_SOURCE",
    "PaperColumn",
    "paper_row_label",
]
