"""The per-sample scoring rules of MileBench's official ``evaluate.py``.

Which rule a task uses (:func:`scoring_rule`):

* ``"needle"``    task name contains ``NeedleInAHaystack``: 1 when the normalised gold answer is one of
  the whitespace-split words of the normalised prediction;
* ``"substring"`` task name contains ``MMCoQA``: 1 when the normalised gold answer is a substring of the
  normalised prediction (an empty gold answer is therefore always found);
* ``"rouge"``     open-ended tasks: ROUGE-L F of the ``rouge`` package (1.0.1) with the prediction as
  hypothesis and the gold answer as reference; an empty prediction scores ``0``;
* ``"choice"``    multi-choice tasks: 1 when the option extracted from the prediction is the gold
  answer's key (see :mod:`futuremask.eval.options`).

Every function here takes raw strings and normalises them itself, as the official code does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import lru_cache

from .normalize import normalize_answer
from .options import extract_option, option_letter, options_from_choices

RULES = ("needle", "substring", "rouge", "choice")
QUESTION_TYPES = ("open-ended", "multi-choice")
LEVELS = ("Few", "Medium", "Many")


def scoring_rule(task: str, question_type: str) -> str:
    """The rule the official scorer applies to ``task`` (one of :data:`RULES`).

    The task-name rules win over ``question_type``: ``MMCoQA`` is scored by substring whatever its type.
    """
    if "NeedleInAHaystack" in task:
        return "needle"
    if "MMCoQA" in task:
        return "substring"
    if question_type == "open-ended":
        return "rouge"
    if question_type == "multi-choice":
        return "choice"
    raise ValueError(
        f"task {task!r}: unsupported question_type {question_type!r} in meta_data; "
        f"expected one of {QUESTION_TYPES}"
    )


def quantity_level(n_images: int) -> str:
    """Image-quantity level from the number of images: < 6 ``Few``, 6-31 ``Medium``, > 31 ``Many``."""
    if n_images < 6:
        return "Few"
    if n_images > 31:
        return "Many"
    return "Medium"


@lru_cache(maxsize=1)
def _rouge_l():
    from rouge import Rouge  # the reference implementation the official numbers come from

    # Only the ROUGE-L statistic is read; rouge-1/-2 are independent computations in the package.
    return Rouge(metrics=["rouge-l"])


def rouge_l_f(prediction: str, gold: str) -> float | int:
    """ROUGE-L F of normalised strings, as ``Rouge().get_scores(pred, gold)[0]['rouge-l']['f']``.

    The ``rouge`` package splits both texts into sentences at ``"."``, counts *distinct* words
    (``m`` in the reference, ``n`` in the hypothesis), takes the union of the longest common
    subsequences per reference sentence (``l`` distinct words) and returns
    ``2 * (P * R) / (P + R + 1e-8)`` with ``P = l / n`` and ``R = l / m``.

    Returns:
        ``0`` (an int, as the official code stores it) for an empty prediction, else a float.
    """
    if prediction == "":
        return 0
    scorer = _rouge_l()
    try:
        return scorer.get_scores(prediction, gold)[0]["rouge-l"]["f"]
    except RecursionError:
        # The package rebuilds the LCS recursively; very long sentences need a deeper stack.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 4 * (len(prediction) + len(gold)) + 1000))
        try:
            return scorer.get_scores(prediction, gold)[0]["rouge-l"]["f"]
        finally:
            sys.setrecursionlimit(limit)


def judge_choice(prediction: str, gold: str, choices: Sequence[str]) -> tuple[int, str]:
    """Score a multi-choice answer: ``(1 or 0, extracted key)``.

    Prediction, gold answer and choices are normalised; the gold answer must equal one of the
    normalised choices (its first occurrence gives the right key).
    """
    pred = normalize_answer(prediction)
    gold_norm = normalize_answer(gold)
    normed = [normalize_answer(choice) for choice in choices]
    if gold_norm not in normed:
        raise ValueError(
            f"gold answer {gold!r} is not among the choices {list(choices)!r} (after normalisation)"
        )
    extracted = extract_option(pred, options_from_choices(normed))
    right = option_letter(normed.index(gold_norm))
    return int(extracted == right), extracted


def score_answer(
    rule: str, prediction: str, gold: str, choices: Sequence[str] | None = None
) -> tuple[float | int, str | None]:
    """Score one prediction with ``rule``: ``(score, extracted option or None)``.

    ``choices`` is required for the ``"choice"`` rule and ignored otherwise.
    """
    if rule == "choice":
        if choices is None:
            raise ValueError("the 'choice' rule needs the sample's choice_list")
        return judge_choice(prediction, gold, choices)
    pred = normalize_answer(prediction)
    gold_norm = normalize_answer(gold)
    if rule == "needle":
        return int(gold_norm in pred.split()), None
    if rule == "substring":
        return int(gold_norm in pred), None
    if rule == "rouge":
        if gold_norm == "":
            raise ValueError(f"gold answer {gold!r} is empty after normalisation; ROUGE-L is undefined")
        return rouge_l_f(pred, gold_norm), None
    raise ValueError(f"unknown scoring rule {rule!r}; expected one of {RULES}")


__all__ = [
    "LEVELS",
    "QUESTION_TYPES",
    "RULES",
    "judge_choice",
    "quantity_level",
    "rouge_l_f",
    "score_answer",
    "scoring_rule",
]
