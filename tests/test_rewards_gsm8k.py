import time

import pytest

import rewards
from rewards.gsm8k import ANSWER_PREFIX, extract_final_answer, gold_answer, parse_number

A = ANSWER_PREFIX
MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("72", 72.0, id="integer"),
        pytest.param("  72  ", 72.0, id="surrounding-spaces"),
        pytest.param("72.", 72.0, id="trailing-period"),
        pytest.param("-5", -5.0, id="negative"),
        pytest.param("−5", -5.0, id="unicode-minus"),  # Unicode minus
        pytest.param("3.25", 3.25, id="decimal"),
        pytest.param(".5", 0.5, id="leading-dot"),
        pytest.param("1,234,567", 1234567.0, id="thousands-commas"),
        pytest.param("$1,234.50", 1234.5, id="dollars-and-cents"),
        pytest.param("€18", 18.0, id="euro-sign"),
        pytest.param("$ 42", 42.0, id="dollar-then-space"),
        pytest.param("-$5", -5.0, id="minus-before-dollar"),
        pytest.param("$-5", -5.0, id="minus-after-dollar"),
        pytest.param("25%", 25.0, id="percent"),
        pytest.param("25 %", 25.0, id="spaced-percent"),
        pytest.param("3/4", 0.75, id="fraction"),
        pytest.param("-3/4", -0.75, id="negative-fraction"),
        pytest.param("5 apples", 5.0, id="one-trailing-word"),
        pytest.param("18 square feet.", 18.0, id="two-trailing-words"),
        pytest.param("$12 per hour", 12.0, id="dollars-per-hour"),
        pytest.param("12 dollars per hour", None, id="three-trailing-words"),  # three trailing words: not a bare number
        pytest.param("5 apples and 3", None, id="two-numbers"),
        pytest.param("1,23", None, id="bad-thousands-grouping"),  # not a thousands grouping
        pytest.param("1/0", None, id="division-by-zero"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
        pytest.param("-inf", None, id="negative-inf"),
        pytest.param("1e5", None, id="exponent"),
        pytest.param("9" * 400, None, id="overflows-to-inf"),  # would overflow to inf
        pytest.param("", None, id="empty"),
        pytest.param("-", None, id="bare-minus"),
        pytest.param("$", None, id="bare-dollar"),
        pytest.param("x = 5", None, id="equation"),
        pytest.param("5 or 6", None, id="hedged-two-answers"),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        pytest.param(f"work\n{A} 72", "72", id="after-work"),
        pytest.param(f"{A}   $1,000  \nthanks", "$1,000", id="keeps-symbols-strips-spaces"),
        pytest.param(f"  {A} 5", "5", id="indented-prefix"),
        pytest.param("", None, id="empty"),
        pytest.param("the answer is 72", None, id="no-answer-line"),
        pytest.param(f"{A} 5\n{A} 6", None, id="hedged-two-answers"),  # hedged
        pytest.param(f"so {A} 5", None, id="prefix-mid-line"),  # not at the start of a line
    ],
)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        pytest.param(f"3 + 4 = 7\n{A} 7", 0.5, id="work-then-answer"),
        pytest.param(f"3 + 4 = 7\n{A} 7\n\n  \n", 0.5, id="trailing-blank-lines"),  # trailing blank lines are fine
        pytest.param(f"{A} -2.5", 0.5, id="negative-decimal"),
        pytest.param(f"{A} $1,200", 0.5, id="dollars-with-comma"),
        pytest.param(f"{A} 7 apples.", 0.5, id="number-with-unit"),
        pytest.param("", 0.0, id="empty"),
        pytest.param("3 + 4 = 7", 0.0, id="no-answer-line"),
        pytest.param("#### 7", 0.0, id="gsm8k-marker"),  # GSM8K's own marker, not the answer line we ask for
        pytest.param(f"{A} seven", 0.0, id="word-answer"),
        pytest.param(f"{A} 7\nI hope this helps!", 0.0, id="answer-line-not-last"),  # answer line not last
        pytest.param(f"{A} 7\n{A} 8", 0.0, id="hedged-two-answers"),  # hedged
        pytest.param(f"{A} 7\n{A} 7", 0.0, id="repeated-answer-line"),  # repeated, still two answer lines
        pytest.param(f"The result: {A} 7", 0.0, id="prefix-mid-line"),  # prefix mid-line
        pytest.param(f"{A} nan", 0.0, id="nan-answer"),
        pytest.param(f"{A}", 0.0, id="missing-number"),
    ],
)
def test_format_reward(completion, expected):
    assert rewards.format_reward([completion]) == [expected]


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        pytest.param(f"3 + 4 = 7\n{A} 7", "7", 1.0, id="right-answer"),
        pytest.param(f"{A} 7\nDone.", "7", 1.0, id="answer-not-last"),  # not last: format's business, still correct
        pytest.param(f"{A} 8", "7", 0.0, id="wrong-answer"),  # right format, wrong answer
        pytest.param("", "7", 0.0, id="empty"),
        pytest.param("the answer is 7", "7", 0.0, id="no-answer-line"),  # no answer line
        pytest.param(f"{A} 7\n{A} 8", "7", 0.0, id="hedged-one-right"),  # hedged, one of them right
        pytest.param(f"{A} 7\n{A} 7", "7", 0.0, id="repeated-answer-line"),
        pytest.param(f"{A} 7 or 8", "7", 0.0, id="two-answers-on-one-line"),
        pytest.param(f"{A} -3", "-3", 1.0, id="negative"),
        pytest.param(f"{A} 3", "-3", 0.0, id="sign-mismatch"),
        pytest.param(f"{A} 0.5", "1/2", 1.0, id="decimal-equals-fraction"),
        pytest.param(f"{A} 1/3", "0.3333", 1.0, id="within-tolerance"),  # |1/3 - 0.3333| = 3.3e-5 <= 1e-3
        pytest.param(f"{A} 0.335", "1/3", 0.0, id="outside-tolerance"),  # |0.335 - 1/3| = 1.7e-3 > 1e-3
        pytest.param(f"{A} 2.50", "2.5", 1.0, id="trailing-zero"),
        pytest.param(f"{A} $1,234.00", "1234", 1.0, id="dollars-and-cents"),
        pytest.param(f"{A} 1,234", "$1,234", 1.0, id="dollar-sign-in-gold"),
        pytest.param(f"{A} 15%", "15", 1.0, id="percent"),
        pytest.param(f"{A} 42 dollars.", "42", 1.0, id="trailing-unit-word"),
        pytest.param(f"{A} nan", "7", 0.0, id="nan-answer"),
        pytest.param(f"{A} inf", "7", 0.0, id="inf-answer"),
        pytest.param(f"{A} " + "9" * 400, "7", 0.0, id="overflows-to-inf"),
        pytest.param(
            "Natalia sold 48/2 = <<48/2=24>>24 clips.\n" + f"{A} 72", "He sold 24.\n#### 72", 1.0,
            id="gold-is-a-solution",
        ),
    ],
)
def test_correctness_reward(completion, answer, expected):
    assert rewards.correctness_reward([completion], answer=[answer]) == [expected]


def test_correctness_reward_skips_rows_without_answer():
    assert rewards.correctness_reward([f"{A} 7", f"{A} 7"], answer=[None, "7"]) == [None, 1.0]


def test_correctness_reward_rejects_malformed_gold_answer():
    with pytest.raises(ValueError, match="is not a number"):
        gold_answer("seventy-two")


def test_correctness_reward_rejects_ragged_columns():
    with pytest.raises(ValueError, match="has 1 rows but there are 2 completions"):
        rewards.correctness_reward(["a", "b"], answer=["7"])


@pytest.mark.parametrize(
    "completion, expected_format, expected_correct",
    [
        ("9" * MEGABYTE, 0.0, 0.0),
        (f"{A} 5\n" * (MEGABYTE // 30), 0.0, 0.0),  # ~33k hedged answer lines
        ("\n" * MEGABYTE + f"{A} 5", 0.5, 1.0),
        (" " * MEGABYTE + f"{A} 5", 0.5, 1.0),  # indentation before the prefix is allowed
        (f"{A} " + "1," * (MEGABYTE // 2) + "5", 0.0, 0.0),
        (f"{A} " + "$" * MEGABYTE, 0.0, 0.0),
        (f"{A} " + "a " * (MEGABYTE // 2), 0.0, 0.0),
        (f"{A} 5" + "." * MEGABYTE, 0.0, 0.0),
        ("#" * MEGABYTE, 0.0, 0.0),
        ("#### The final answer" * (MEGABYTE // 21), 0.0, 0.0),
    ],
    ids=["digits", "answer-lines", "newlines", "spaces", "commas", "dollars", "words", "periods", "hashes", "prefixes"],
)
def test_rewards_score_a_megabyte_in_well_under_a_second(completion, expected_format, expected_correct):
    start = time.perf_counter()
    fmt = rewards.format_reward([completion])
    correct = rewards.correctness_reward([completion], answer=["5"])
    assert time.perf_counter() - start < 0.5
    assert (fmt, correct) == ([expected_format], [expected_correct])
