"""GSM8K rewards: a format reward and an exact-number correctness reward.

The completion must end with one answer line `#### The final answer is X`.

Loopholes closed here (what a policy would otherwise learn):
- hedging: two or more answer lines score 0, even if one of them is right;
- junk after the answer: the format reward wants the answer line last;
- `nan`/`inf`, 400-digit numbers and other overflowing text never match;
- 1 MB completions: every step is a linear scan (`str.count`, `rfind`, bounded
  regexes on at most `_MAX_NUMBER_CHARS` characters), no backtracking regex.
"""

import math
import re

from rewards.registry import check_rows, register

ANSWER_PREFIX = "#### The final answer is"
FORMAT_REWARD = 0.5
CORRECT_REWARD = 1.0
ABS_TOLERANCE = 1e-3

# An answer longer than this is not a number a GSM8K problem asks for; the cap
# also keeps float() and the regexes below on short strings.
_MAX_NUMBER_CHARS = 64
_CURRENCY = frozenset("$€£¥₹")
_MINUS = frozenset("-−–")  # ASCII hyphen, Unicode minus, en dash (models emit all three)
# Plain digits, or digits grouped by thousands commas (1,234,567), then an
# optional fraction part. Each alternative is unambiguous, so matching is linear.
_DECIMAL = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+")
_WORD = re.compile(r"[A-Za-z]+")


def _unsigned_value(text: str) -> float | None:
    """`1,234.5` -> 1234.5 and `3/4` -> 0.75; None for anything else."""
    numerator, slash, denominator = text.partition("/")
    if not _DECIMAL.fullmatch(numerator):
        return None
    value = float(numerator.replace(",", ""))
    if slash:
        if not _DECIMAL.fullmatch(denominator):
            return None
        divisor = float(denominator.replace(",", ""))
        if divisor == 0:
            return None
        value /= divisor
    return value


def _drop_trailing_unit_words(tokens: list[str]) -> list[str]:
    """`["42", "square", "feet"]` -> `["42"]`: at most two trailing words go."""
    kept = list(tokens)
    for _ in range(2):
        if len(kept) > 1 and _WORD.fullmatch(kept[-1]):
            kept.pop()
    return kept


def parse_number(text: str) -> float | None:
    """The number written in `text`, or None if it is not (just) a number.

    Removed before parsing: surrounding whitespace, a trailing period, up to two
    trailing unit words (`5 apples`, `18 square feet`), a trailing `%`, a leading
    currency sign (before or after the minus), thousands separators. Understood:
    negatives, decimals, plain fractions `a/b`. Never returns nan or inf.
    """
    if len(text) > 4 * _MAX_NUMBER_CHARS:
        return None
    tokens = _drop_trailing_unit_words(text.strip().rstrip(".").split())
    # `$ 42` and `25 %`: a lone currency sign or percent is part of the number.
    if len(tokens) == 2 and (tokens[0] in _CURRENCY or tokens[1] == "%"):
        tokens = ["".join(tokens)]
    if len(tokens) != 1 or len(tokens[0]) > _MAX_NUMBER_CHARS:
        return None
    number = tokens[0].rstrip(".").removesuffix("%")
    sign = 1.0
    # Both `-$5` and `$-5` occur; accept one sign and one currency in either order.
    if number[:1] in _CURRENCY:
        number = number[1:]
    if number[:1] in _MINUS:
        sign, number = -1.0, number[1:]
    if number[:1] in _CURRENCY:
        number = number[1:]
    value = _unsigned_value(number)
    if value is None or not math.isfinite(value):
        return None
    return sign * value


def _answer_line_start(completion: str) -> int | None:
    """Index where the single answer line's prefix starts, or None.

    None when the prefix occurs zero times, two or more times (hedging), or not
    at the start of a line (only whitespace may precede it on its line).
    """
    if completion.count(ANSWER_PREFIX) != 1:
        return None
    start = completion.find(ANSWER_PREFIX)
    line_start = completion.rfind("\n", 0, start) + 1
    if completion[line_start:start].strip():
        return None
    return start


def extract_final_answer(completion: str) -> str | None:
    """X from the completion's single `#### The final answer is X` line, else None."""
    start = _answer_line_start(completion)
    if start is None:
        return None
    line_end = completion.find("\n", start)
    line = completion[start:] if line_end == -1 else completion[start:line_end]
    return line[len(ANSWER_PREFIX) :].strip()


def gold_answer(answer: str) -> float:
    """The ground-truth number of a row: a bare number, or a raw GSM8K solution
    ending in `#### 72` (its text after the last `####` is used).

    Raises ValueError for a malformed row: training on an unreadable answer would
    silently reward nothing.
    """
    text = answer.rpartition("####")[2] if "####" in answer else answer
    value = parse_number(text)
    if value is None:
        raise ValueError(
            f"GSM8K answer {answer[:80]!r} is not a number; the `answer` column must hold the "
            f"final number (e.g. '72') or a GSM8K solution ending in '#### 72'"
        )
    return value


def is_correct(completion: str, answer: str) -> bool:
    """Whether the completion's single answer line holds `answer` (within 1e-3)."""
    predicted_text = extract_final_answer(completion)
    predicted = None if predicted_text is None else parse_number(predicted_text)
    return predicted is not None and abs(predicted - gold_answer(answer)) <= ABS_TOLERANCE


def _has_valid_format(completion: str) -> bool:
    start = _answer_line_start(completion)
    if start is None:
        return False
    last_line_start = completion.rstrip().rfind("\n") + 1
    answer_line_start = completion.rfind("\n", 0, start) + 1
    if answer_line_start != last_line_start:
        return False
    return parse_number(extract_final_answer(completion)) is not None


@register("gsm8k_format")
def format_reward(completions: list[str], **columns) -> list[float]:
    """0.5 when the completion has exactly one answer line, it is the last
    non-empty line and X is a number; else 0.0."""
    return [FORMAT_REWARD if _has_valid_format(c) else 0.0 for c in completions]


@register("gsm8k_correctness")
def correctness_reward(completions: list[str], answer: list[str | None], **columns) -> list[float | None]:
    """1.0 when the single answer line's X equals the row's `answer` within 1e-3,
    else 0.0; None for rows whose `answer` is None (not a GSM8K row)."""
    check_rows("gsm8k_correctness", completions, answer=answer)
    return [
        None if gold is None else (CORRECT_REWARD if is_correct(c, gold) else 0.0)
        for c, gold in zip(completions, answer)
    ]
