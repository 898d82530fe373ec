"""Answer normalisation exactly as MileBench's official scorer applies it.

The official ``evaluate.py`` normalises every prediction, gold answer and choice before comparing
them. Its rules have a few surprising corners; they are part of the benchmark's numbers, so this
module reproduces them on purpose rather than "fixing" them:

* The decision "delete a punctuation mark" versus "replace it by a space" is taken per mark on the
  *original* text: a mark is deleted everywhere when it touches a space anywhere in the text, and
  *every* mark is deleted (never spaced) as soon as the text holds a digit-comma-digit group such as
  ``"1,000"``.
* Periods not followed by a digit are removed, but at most 32 of them: the official call passes
  ``re.UNICODE`` (whose value is 32) in the ``count`` position of ``Pattern.sub``.
* Single and double quotes are stripped only at the ends, after the punctuation step.
"""

from __future__ import annotations

import re

PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
"""The marks the official scorer deletes or turns into spaces (its order does not change the result)."""

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (no-op) lookahead, so the rule is
# simply "a period that is not followed by a digit".
_LONE_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32  # == re.UNICODE, passed as ``count`` by the official code


def strip_punctuation(text: str) -> str:
    """Apply the official punctuation step to ``text`` (no case folding, no trimming).

    >>> strip_punctuation("left-right")
    'left right'
    >>> strip_punctuation("a - b")
    'a  b'
    >>> strip_punctuation("1,000 (approx)")
    '1000 approx'
    """
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = (mark + " " in text) or (" " + mark in text)
        out = out.replace(mark, "" if (touches_space or delete_all) else " ")
    return _LONE_PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_answer(text: str) -> str:
    """Normalise a prediction, gold answer or choice the way MileBench's scorer does.

    Newlines and tabs become spaces, the text is trimmed, punctuation is handled by
    :func:`strip_punctuation`, then single and double quotes are stripped from the ends, the text is
    trimmed again and lower-cased.

    >>> normalize_answer("  The Cat.\\n")
    'the cat'
    >>> normalize_answer("'3.5'")
    '3.5'
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a string to normalise, got {type(text).__name__}: {text!r}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = strip_punctuation(text)
    return text.strip("'").strip('"').strip().lower()


__all__ = ["PUNCTUATION", "normalize_answer", "strip_punctuation"]
