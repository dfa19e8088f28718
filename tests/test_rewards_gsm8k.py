import time

import pytest

import rewards
from rewards.gsm8k import ANSWER_PREFIX, extract_final_answer, gold_answer, parse_number

A = ANSWER_PREFIX
MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "text, expected",
    [
        ("72", 72.0),
        ("  72  ", 72.0),
        ("72.", 72.0),
        ("-5", -5.0),
        ("−5", -5.0),  # Unicode minus
        ("3.25", 3.25),
        (".5", 0.5),
        ("1,234,567", 1234567.0),
        ("$1,234.50", 1234.5),
        ("€18", 18.0),
        ("$ 42", 42.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("25%", 25.0),
        ("25 %", 25.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("5 apples", 5.0),
        ("18 square feet.", 18.0),
        ("$12 per hour", 12.0),
        ("12 dollars per hour", None),  # three trailing words: not a bare number
        ("5 apples and 3", None),
        ("1,23", None),  # not a thousands grouping
        ("1/0", None),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("1e5", None),
        ("9" * 400, None),  # would overflow to inf
        ("", None),
        ("-", None),
        ("$", None),
        ("x = 5", None),
        ("5 or 6", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        (f"work\n{A} 72", "72"),
        (f"{A}   $1,000  \nthanks", "$1,000"),
        (f"  {A} 5", "5"),
        ("", None),
        ("the answer is 72", None),
        (f"{A} 5\n{A} 6", None),  # hedged
        (f"so {A} 5", None),  # not at the start of a line
    ],
)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        (f"3 + 4 = 7\n{A} 7", 0.5),
        (f"3 + 4 = 7\n{A} 7\n\n  \n", 0.5),  # trailing blank lines are fine
        (f"{A} -2.5", 0.5),
        (f"{A} $1,200", 0.5),
        (f"{A} 7 apples.", 0.5),
        ("", 0.0),
        ("3 + 4 = 7", 0.0),
        ("#### 7", 0.0),  # GSM8K's own marker, not the answer line we ask for
        (f"{A} seven", 0.0),
        (f"{A} 7\nI hope this helps!", 0.0),  # answer line not last
        (f"{A} 7\n{A} 8", 0.0),  # hedged
        (f"{A} 7\n{A} 7", 0.0),  # repeated, still two answer lines
        (f"The result: {A} 7", 0.0),  # prefix mid-line
        (f"{A} nan", 0.0),
        (f"{A}", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert rewards.format_reward([completion]) == [expected]


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        (f"3 + 4 = 7\n{A} 7", "7", 1.0),
        (f"{A} 7\nDone.", "7", 1.0),  # not last: format's business, still correct
        (f"{A} 8", "7", 0.0),  # right format, wrong answer
        ("", "7", 0.0),
        ("the answer is 7", "7", 0.0),  # no answer line
        (f"{A} 7\n{A} 8", "7", 0.0),  # hedged, one of them right
        (f"{A} 7\n{A} 7", "7", 0.0),
        (f"{A} 7 or 8", "7", 0.0),
        (f"{A} -3", "-3", 1.0),
        (f"{A} 3", "-3", 0.0),
        (f"{A} 0.5", "1/2", 1.0),
        (f"{A} 1/3", "0.3333", 1.0),  # |1/3 - 0.3333| = 3.3e-5 <= 1e-3
        (f"{A} 0.335", "1/3", 0.0),  # |0.335 - 1/3| = 1.7e-3 > 1e-3
        (f"{A} 2.50", "2.5", 1.0),
        (f"{A} $1,234.00", "1234", 1.0),
        (f"{A} 1,234", "$1,234", 1.0),
        (f"{A} 15%", "15", 1.0),
        (f"{A} 42 dollars.", "42", 1.0),
        (f"{A} nan", "7", 0.0),
        (f"{A} inf", "7", 0.0),
        (f"{A} " + "9" * 400, "7", 0.0),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n" + f"{A} 72", "He sold 24.\n#### 72", 1.0),
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
