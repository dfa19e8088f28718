"""MATH-style correctness through Hugging Face's `math-verify` (LaTeX, symbolic answers).

`math-verify` does the hard part (extracting `\\boxed{...}` or the last expression,
parsing LaTeX to SymPy, comparing symbolically and numerically). Around it we add:

- hedging: more than one `\\boxed` in a completion scores 0;
- bounded input: only `_WINDOW_CHARS` characters reach the parser (from the single
  `\\boxed`, or the completion's tail when there is none), so a 1 MB completion
  costs no more than a short one;
- no runaway arithmetic: a prediction such as `9^{9^{9^{9}}}` or `(10^9)!` would
  make SymPy grind until the timeout, so it scores 0 before comparison;
- math-verify's own timeout uses `signal.alarm`, which only works in the main
  thread; elsewhere it is switched off and the two guards above remain.
"""

import logging
import threading

from math_verify import parse, verify
from sympy import Basic, factorial, preorder_traversal

from rewards.registry import check_rows, register

BOXED = "\\boxed"
CORRECT_REWARD = 1.0
_WINDOW_CHARS = 1000
_TIMEOUT_S = 1  # integer: math-verify arms signal.alarm with it
# Largest literal exponent / factorial argument worth evaluating: 10^10000 is instant,
# 10^1000000 already takes ~0.5 s.
_MAX_LITERAL_EXPONENT = 10_000

# math-verify logs each timeout and parse failure as a warning quoting the whole
# input: in training that is one line per bad completion, so keep only errors.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _timeout_s() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _answer_window(completion: str) -> str | None:
    """The text math-verify should read, or None when the completion hedges."""
    boxes = completion.count(BOXED)
    if boxes > 1:
        return None
    if boxes == 1:
        start = completion.find(BOXED)
        return completion[start : start + _WINDOW_CHARS]
    return completion[-_WINDOW_CHARS:]


def _is_big_number(expr: Basic) -> bool:
    """A numeric SymPy node that is not a small literal (e.g. `10**9`, `2**(2**100)`)."""
    if not expr.is_number:
        return False
    if not expr.is_Rational:
        return True
    return abs(expr) > _MAX_LITERAL_EXPONENT


def _is_costly(expr) -> bool:
    """Whether comparing `expr` could evaluate a gigantic number."""
    if not isinstance(expr, Basic):
        return False
    for node in preorder_traversal(expr):
        if node.is_Pow and node.base.is_number and _is_big_number(node.exp):
            return True
        if isinstance(node, factorial) and _is_big_number(node.args[0]):
            return True
    return False


def parse_gold(answer: str) -> list:
    """Parse a row's ground truth (`\\frac{1}{2}`, `$x^2$`, a solution with `\\boxed{}`).

    A bare answer is read as LaTeX math: unwrapped, math-verify would read
    `2\\sqrt{2}` as 2 and find nothing in `x^2+1`.
    """
    is_bare = "$" not in answer and BOXED not in answer
    gold = parse(f"${answer}$" if is_bare else answer, parsing_timeout=_timeout_s())
    if not gold:
        raise ValueError(
            f"math_verify: ground-truth answer {answer[:80]!r} could not be parsed; the `answer` "
            f"column must hold a LaTeX or plain math answer such as '\\\\frac{{1}}{{2}}' or '$x^2$'"
        )
    return gold


def is_correct(completion: str, answer: str) -> bool:
    window = _answer_window(completion)
    if window is None:
        return False
    predicted = parse(window, parsing_timeout=_timeout_s())
    if not predicted or any(_is_costly(p) for p in predicted):
        return False
    return verify(parse_gold(answer), predicted, timeout_seconds=_timeout_s())


@register("math_verify")
def math_verify_reward(completions: list[str], answer: list[str | None], **columns) -> list[float | None]:
    """1.0 when math-verify finds the completion's answer equal to `answer`, else 0.0;
    None for rows whose `answer` is None."""
    check_rows("math_verify", completions, answer=answer)
    return [
        None if gold is None else (CORRECT_REWARD if is_correct(c, gold) else 0.0)
        for c, gold in zip(completions, answer)
    ]
