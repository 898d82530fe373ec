"""One test per official MileBench scoring rule, with hand-worked expected values."""

from __future__ import annotations

import pytest

from futuremask.eval.metrics import judge_choice, quantity_level, rouge_l_f, score_answer, scoring_rule
from futuremask.eval.normalize import normalize_answer
from futuremask.eval.options import extract_option, option_letter, options_from_choices

# --- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  The Cat.\n", "the cat"),  # trim, trailing period removed, lower-case
        ("tab\there", "tab here"),  # tabs and newlines become spaces
        ("left-right", "left right"),  # mark touching no space -> replaced by a space
        ("a - b", "a  b"),  # mark touching a space -> deleted (the double space stays)
        ("Hello, world", "hello world"),  # ", " touches a space -> deleted
        ("a,b", "a b"),  # comma between letters, no space -> space
        ("1,000 (approx)", "1000 approx"),  # digit,digit anywhere -> every mark deleted
        ("What?!", "what"),  # spaced, then trimmed
        ("x_y", "x y"),
        ("3.5 apples.", "3.5 apples"),  # a period before a digit stays
        ("e.g.", "eg"),
        ("'quoted'", "quoted"),  # single quotes stripped at the ends only
        ("it's", "it's"),
        ('"x"', "x"),  # double quotes are punctuation: spaced then trimmed
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_normalize_removes_at_most_32_periods() -> None:
    # The official call passes re.UNICODE (== 32) as the `count` of Pattern.sub.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("a." * 33) == "a" * 32 + "a."


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="expected a string"):
        normalize_answer(None)  # type: ignore[arg-type]


# --- option keys and extraction ------------------------------------------------------------------


def test_option_letters_past_z() -> None:
    assert [option_letter(i) for i in (0, 1, 25, 26, 27, 51, 52, 53)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
        "AZ",
        "BA",
        "BB",
    ]
    assert options_from_choices(["cat", "dog"]) == {"A": "cat", "B": "dog"}


CAT_DOG = {"A": "cat", "B": "dog"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("", "C"),  # empty prediction counts as C, even with two choices
        ("b", "B"),  # a one-character key
        ("b dog", "B"),  # "<key> <choice>" found by the first regex
        ("i think it is a dog", "B"),  # choice text found in the space-free prediction
        ("the answer is b", "AB"),  # fallback: the "a" of "answer" and the final "b" -> wrong
        ("none", ""),  # nothing matches, no key letters
        ("abba", "ABBA"),  # fallback keeps every key character, in order
    ],
)
def test_extract_option(prediction: str, expected: str) -> None:
    assert extract_option(prediction, CAT_DOG) == expected


def test_extract_option_choice_with_regex_character_is_never_returned_by_text() -> None:
    # "3.5" is searched as "3\.5" and found, but the match is compared with the escaped text, so the
    # text step gives nothing; the fallback finds no key letter.
    options = options_from_choices(["3.5", "4"])
    assert extract_option("3.5", options) == ""
    assert extract_option("a 3.5", options) == "A"  # the "<key> <choice>" regex still works


def test_extract_option_two_letter_key_returns_first_letter() -> None:
    options = options_from_choices([f"item{i}" for i in range(30)])  # keys A..Z, AA..AD
    assert extract_option("ab item27", options) == "A"  # first character of the match only


def test_judge_choice() -> None:
    assert judge_choice("B", "Dog", ["Cat", "Dog"]) == (1, "B")
    assert judge_choice("The answer is B", "Dog", ["Cat", "Dog"]) == (0, "AB")
    assert judge_choice("Dog.", "dog", ["cat", "DOG"]) == (1, "B")  # all three sides normalised
    with pytest.raises(ValueError, match="not among the choices"):
        judge_choice("A", "bird", ["cat", "dog"])


# --- task rules ----------------------------------------------------------------------------------


def test_scoring_rule_dispatch() -> None:
    assert scoring_rule("TextNeedleInAHaystack", "open-ended") == "needle"
    assert scoring_rule("ImageNeedleInAHaystack", "multi-choice") == "needle"
    assert scoring_rule("MMCoQA", "multi-choice") == "substring"
    assert scoring_rule("DocVQA", "open-ended") == "rouge"
    assert scoring_rule("ActionSequence", "multi-choice") == "choice"
    with pytest.raises(ValueError, match="question_type"):
        scoring_rule("DocVQA", "yes-no")


def test_needle_rule_is_a_whole_word_match() -> None:
    assert score_answer("needle", "The needle is apple.", "apple") == (1, None)
    assert score_answer("needle", "apple, I think", "Apple") == (1, None)
    assert score_answer("needle", "pineapple", "apple") == (0, None)


def test_mmcoqa_rule_is_a_substring_match() -> None:
    assert score_answer("substring", "pineapples", "apple") == (1, None)
    assert score_answer("substring", "It is in Paris, France", "paris") == (1, None)
    assert score_answer("substring", "appl", "apple") == (0, None)
    assert score_answer("substring", "anything", "") == (1, None)  # empty gold is always found


@pytest.mark.parametrize(
    ("n", "level"), [(1, "Few"), (5, "Few"), (6, "Medium"), (31, "Medium"), (32, "Many")]
)
def test_quantity_level_boundaries(n: int, level: str) -> None:
    assert quantity_level(n) == level


# --- ROUGE-L ------------------------------------------------------------------------------------


def test_rouge_l_hand_worked() -> None:
    # hyp "the cat sat on the mat": distinct words n = 5; ref "the cat is on the mat": m = 5.
    # LCS = the cat on the mat -> distinct words {the, cat, on, mat}: l = 4. P = R = 4/5.
    p = r = 4 / 5
    assert rouge_l_f("the cat sat on the mat", "the cat is on the mat") == 2.0 * (p * r / (p + r + 1e-8))
    # hyp "red" (n = 1) against ref "the red cat" (m = 3): l = 1, P = 1, R = 1/3.
    p, r = 1.0, 1 / 3
    assert rouge_l_f("red", "the red cat") == 2.0 * (p * r / (p + r + 1e-8))


def test_rouge_l_sentences_are_split_at_periods_and_unioned() -> None:
    # hyp sentences "a b" and "c d" (n = 4); ref "a c" (m = 2): LCS with each hyp sentence is {a} and
    # {c}, union {a, c}: l = 2, P = 2/4, R = 2/2.
    p, r = 0.5, 1.0
    assert rouge_l_f("a b. c d", "a c") == 2.0 * (p * r / (p + r + 1e-8))


def test_rouge_rule_normalises_and_scores_empty_as_int_zero() -> None:
    score, _ = score_answer("rouge", "The cat sat on the mat.", "The cat is on the mat")
    assert score == pytest.approx(0.8, abs=1e-8)
    empty, _ = score_answer("rouge", "  ", "red")
    assert empty == 0 and isinstance(empty, int)
    with pytest.raises(ValueError, match="empty after normalisation"):
        score_answer("rouge", "x", "...")


def test_rouge_l_long_prediction_beyond_the_recursion_limit() -> None:
    # The package rebuilds the LCS recursively (depth ~ words of both sentences); 1200 words exceed
    # Python's default limit of 1000. Distinct words n = 1200, m = 2, LCS {w0, w5}: P = 2/1200, R = 1.
    prediction = " ".join(f"w{i}" for i in range(1200))
    p, r = 2 / 1200, 1.0
    assert rouge_l_f(prediction, "w0 w5") == 2.0 * (p * r / (p + r + 1e-8))
