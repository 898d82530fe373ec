"""Multiple-choice option extraction exactly as MileBench's official scorer does it.

The official matcher turns a free-form, already normalised prediction into an option key ("A", "B",
...). Its order of attempts and its quirks are reproduced deliberately, because they decide the
published accuracies:

1. An empty prediction counts as ``"C"``.
2. A regex alternation of the normalised ``"<key> <choice>"`` strings (``"a cat|b dog"``) is searched in
   the prediction; the first character of the leftmost match, upper-cased, is the answer (so for keys
   of two letters such as ``"AB"`` only ``"A"`` comes back).
3. The space-free choice texts are searched in the space-free prediction; the match is then compared
   with the *regex-escaped* choice text, so a choice holding ``.``, ``*``, ``^``, ``$`` or ``|``
   (e.g. ``"3.5"``) can be found but never returned here, and the search falls through.
4. A prediction of one or two characters that is itself a key, upper-cased.
5. Otherwise every character whose upper case is a key, concatenated: ``"b"`` gives ``"B"``, while
   ``"the answer is b"`` gives ``"AB"`` (from the "a" of "answer" and the final "b"), which is wrong.

An exception inside steps 2-4 (a pattern the regex engine rejects) returns the prediction itself, as
the official code does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from .normalize import normalize_answer

_LOG = logging.getLogger(__name__)

# The characters the official matcher escapes, in its order (the backslash first, so that inserted
# backslashes are not escaped again).
_REGEX_SPECIALS = ("\\", ".", "^", "$", "*", "+", "?", "{", "}", "[", "]", "|", "(", ")")


def option_letter(index: int) -> str:
    """Key of the ``index``-th choice (0-based): ``A``..``Z``, then ``AA``..``AZ``, then ``BA``...

    >>> [option_letter(i) for i in (0, 25, 26, 51, 52)]
    ['A', 'Z', 'AA', 'AZ', 'BA']
    """
    if index < 0:
        raise ValueError(f"choice index must be >= 0, got {index}")
    if index < 26:
        return chr(65 + index)
    if index < 52:
        return "A" + chr(65 + index - 26)
    return "B" + chr(65 + index - 52)


def options_from_choices(choices: Sequence[str]) -> dict[str, str]:
    """Map keys to choice texts in list order: ``["cat", "dog"] -> {"A": "cat", "B": "dog"}``."""
    return {option_letter(i): choice for i, choice in enumerate(choices)}


def _pattern_text(text: str) -> str:
    """Normalise ``text`` and escape the characters the official matcher escapes."""
    out = normalize_answer(text)
    for char in _REGEX_SPECIALS:
        out = out.replace(char, "\\" + char)
    return out


def _match(text: str, options: Mapping[str, str]) -> str | None:
    """Steps 2-4 of the module docstring; ``None`` when none of them decides."""
    keyed = "|".join(_pattern_text(f"{key} {choice}") for key, choice in options.items())
    found = re.search(f"({keyed})", text, re.S)
    if found:
        return found.group(0)[0].upper()

    squeezed = {key: _pattern_text(choice).replace(" ", "") for key, choice in options.items()}
    found = re.search("(" + "|".join(squeezed.values()) + ")", text.replace(" ", ""), re.S)
    if found:
        for key, escaped in squeezed.items():
            if found[0].strip() == escaped:
                return key.upper()

    if len(text) in (1, 2) and text.upper() in options:
        return text.upper()
    return None


def extract_option(text: str, options: Mapping[str, str]) -> str:
    """Return the option key(s) the official matcher reads in a normalised prediction.

    Args:
        text: the prediction, already passed through :func:`normalize_answer`.
        options: key -> choice text (normalised), in choice-list order, as from
            :func:`options_from_choices`.

    Returns:
        A key such as ``"B"``, a concatenation of keys such as ``"AB"`` (a wrong answer), ``""`` when
        nothing matches, or ``text`` itself when the regex engine rejected a pattern.
    """
    if text == "":
        return "C"
    try:
        decided = _match(text, options)
    except Exception as err:  # noqa: BLE001 - the official matcher swallows every error the same way
        _LOG.warning("option matching failed on %r: %s", text, err)
        return text
    if decided is not None:
        return decided
    return "".join(char.upper() for char in text if char.upper() in options)


__all__ = ["extract_option", "option_letter", "options_from_choices"]
