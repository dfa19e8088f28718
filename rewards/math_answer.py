"""MATH-style correctness through Hugging Face's `math-verify` (LaTeX, symbolic answers).

`math-verify` does the hard part (extracting `\\boxed{...}` or the last expression,
parsing LaTeX to SymPy, comparing symbolically and numerically). Around it we add:

- hedging: more than one `\\boxed` in a completion scores 0;
- without a `\\boxed`, only the final answer is graded: the sentence that holds the
  completion's last "answer is" / "answer:" (from there to the sentence's end), else
  its last sentence; if that statement names several different answers (math spans
  `$...$`, `\\(...\\)`, `\\[...\\]`, or else numbers), as in "$5$ or maybe $6$", it
  scores 0. Equal ones ("$\\frac12$, that is $0.5$") are one answer;
- bounded input: only `_WINDOW_CHARS` characters reach the parser (from the single
  `\\boxed`, or the completion's tail when there is none), so a 1 MB completion
  costs no more than a short one;
- no runaway arithmetic: a prediction such as `9^{9^{9^{9}}}` or `(10^9)!` would
  make SymPy grind until the timeout, so it scores 0 before comparison;
- math-verify's own timeout uses `signal.alarm`, which only works in the main
  thread; elsewhere it is switched off and the two guards above remain.
"""

import logging
import re
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
_MAX_CANDIDATES = 3  # more different answers in one statement is a list, not an answer
_ANCHOR = re.compile(r"\banswer\s*(?:is\b|[:=])", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$.+?\$\$|\$.+?\$|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_NUMBER = re.compile(r"-?\d+(?:[.,/]\d+)*")

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


def final_statement(text: str) -> str:
    """The part of an unboxed completion that states its answer: from its last "answer is" /
    "answer:" to the end of that sentence, else its last sentence. A sentence ends at . ! or ?
    before a space, or at a line break, never inside a math span."""
    spans = [m.span() for m in _MATH_SPAN.finditer(text)]
    outside = lambda position: not any(start <= position < end for start, end in spans)  # noqa: E731
    ends = [m.start() for m in _SENTENCE_END.finditer(text) if outside(m.start())]
    anchors = [m.end() for m in _ANCHOR.finditer(text) if outside(m.start())]
    if anchors:
        return text[anchors[-1] : next((end for end in ends if end >= anchors[-1]), len(text))]
    starts = [end + 1 for end in ends if text[end + 1 :].strip(" \t\n.!?")]  # a sentence with words after it
    return text[starts[-1] if starts else 0 :]


def answer_candidates(statement: str) -> list[str]:
    """The different answers `statement` names: its math spans, or without any, its numbers."""
    spans = list(dict.fromkeys(_MATH_SPAN.findall(statement)))
    return spans or list(dict.fromkeys(_NUMBER.findall(statement)))


def _unboxed_answer(tail: str) -> list:
    """math-verify's reading of the final statement of `tail`, or [] when it names different answers."""
    statement = final_statement(tail)
    candidates = answer_candidates(statement)
    if len(candidates) <= 1:
        return parse(statement, parsing_timeout=_timeout_s())
    if len(candidates) > _MAX_CANDIDATES:
        return []
    readings = [parse(candidate, parsing_timeout=_timeout_s()) for candidate in candidates]
    if not all(readings) or any(_is_costly(p) for reading in readings for p in reading):
        return []
    first = readings[0]
    same = all(verify(first, other, timeout_seconds=_timeout_s()) for other in readings[1:])
    return first if same else []


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
    predicted = parse(window, parsing_timeout=_timeout_s()) if BOXED in window else _unboxed_answer(window)
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
