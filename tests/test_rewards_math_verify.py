import threading
import time

import pytest

import rewards
from rewards.math_answer import math_verify_reward

MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        pytest.param("So the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", 1.0, id="boxed-fraction-in-prose"),
        pytest.param("\\boxed{0.5}", "\\frac{1}{2}", 1.0, id="decimal-equals-fraction"),
        pytest.param("\\boxed{\\dfrac{6}{12}}", "$\\frac12$", 1.0, id="equivalent-fraction"),
        pytest.param("\\boxed{1+x^2}", "x^2+1", 1.0, id="reordered-polynomial"),
        pytest.param("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0, id="simplified-root"),
        pytest.param(  # no box: math-verify's last expression
            "The final answer is $3$.", "3", 1.0, id="unboxed-last-expression"
        ),
        pytest.param(  # gold is a solution
            "Solution: ... so \\boxed{7}.", "He gets $\\boxed{7}$ apples.", 1.0, id="gold-is-a-solution"
        ),
        pytest.param("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0, id="wrong-answer"),  # right format, wrong answer
        pytest.param("", "\\frac{1}{2}", 0.0, id="empty"),
        pytest.param("I do not know.", "\\frac{1}{2}", 0.0, id="no-answer"),  # no answer
        pytest.param("\\boxed{1} or \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 0.0, id="hedged-two-answers"),  # hedged
        pytest.param("\\boxed{\\frac{1}{2}} \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 0.0, id="two-boxes"),  # two boxes
        pytest.param("\\boxed{1, \\frac{1}{2}}", "\\frac{1}{2}", 0.0, id="set-not-number"),  # a set is not a number
        pytest.param("\\boxed{9^{9^{9^{9}}}}", "3", 0.0, id="power-tower"),  # would evaluate forever
        pytest.param("\\boxed{(10^{9})!}", "3", 0.0, id="huge-factorial"),
        pytest.param("\\boxed{2^{2^{100}}}", "3", 0.0, id="huge-power"),
        pytest.param(  # box far from the end
            "\\boxed{\\frac{1}{2}" + " filler" * 1000, "\\frac{1}{2}", 1.0, id="box-far-from-end"
        ),
        pytest.param("\\boxed{" + "{" * 5000, "3", 0.0, id="unclosed-braces"),
    ],
)
def test_math_verify_reward(completion, answer, expected):
    assert math_verify_reward([completion], answer=[answer]) == [expected]


# Without a box only the final statement is graded: the sentence of the last "answer is" / "answer:",
# else the last sentence; two different answers in it score 0 whichever is right.
@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        pytest.param("$5$ or maybe $6$", "5", 0.0, id="two-answers-first-right"),
        pytest.param("$5$ or maybe $6$", "6", 0.0, id="two-answers-last-right"),
        pytest.param("The answer is $5$ or maybe $6$.", "5", 0.0, id="anchored-two-answers"),
        pytest.param("The answer is 5 or 6.", "5", 0.0, id="two-numbers-first-right"),
        pytest.param("The answer is 5 or 6.", "6", 0.0, id="two-numbers-last-right"),
        pytest.param("So x = 5 and y = 6", "6", 0.0, id="two-numbers-no-anchor"),
        pytest.param("Answer: $1$, $2$, $3$ or $4$", "4", 0.0, id="a-list"),
        pytest.param("First $2+3=5$. So the answer is $6$.", "6", 1.0, id="work-then-answer"),
        pytest.param("First $2+3=5$. So the answer is $6$.", "5", 0.0, id="work-is-not-the-answer"),
        pytest.param("We get $2+3=5$.\nThe final answer is $5$.", "5", 1.0, id="answer-on-its-own-line"),
        pytest.param("The answer is 5. Check: 2 + 3 = 5.", "5", 1.0, id="a-check-after-the-answer"),
        pytest.param("The answer is $5$. Or maybe $6$.", "6", 0.0, id="afterthought-not-graded"),
        pytest.param("The answer is $\\frac{1}{2}$, that is $0.5$.", "\\frac{1}{2}", 1.0, id="equal-answers-are-one"),
        pytest.param("The answer is 1,000 apples.", "1000", 1.0, id="thousands-separator"),
        pytest.param("I computed 12 and 13. Then we get $4.5$", "4.5", 1.0, id="last-sentence"),
    ],
)
def test_only_the_final_answer_is_graded(completion, answer, expected):
    assert math_verify_reward([completion], answer=[answer]) == [expected]


def test_skips_rows_without_answer_and_ignores_extra_columns():
    reward = rewards.get("math_verify")
    assert reward(["\\boxed{2}", "\\boxed{2}"], answer=[None, "2"], prompts=["p", "q"]) == [None, 1.0]


def test_unparseable_gold_answer_is_a_row_error():
    with pytest.raises(ValueError, match="could not be parsed"):
        math_verify_reward(["\\boxed{2}"], answer=[""])


def test_works_outside_the_main_thread():
    # math-verify's signal-based timeout raises in worker threads unless disabled.
    results = []
    worker = threading.Thread(target=lambda: results.append(math_verify_reward(["\\boxed{2}"], answer=["2"])))
    worker.start()
    worker.join()
    assert results == [[1.0]]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("1 " * (MEGABYTE // 2), 0.0),
        ("\\boxed{3}" * (MEGABYTE // 9), 0.0),  # 111k hedged boxes
        ("x" * MEGABYTE, 0.0),
        ("$" * MEGABYTE, 0.0),
        ("\\frac{" * (MEGABYTE // 6), 0.0),
        ("{" * MEGABYTE + "\\boxed{3}", 1.0),
        ("x+" * (MEGABYTE // 2) + "3", 0.0),
        ("so the answer is 3 " * (MEGABYTE // 19), 1.0),  # the tail still says 3
    ],
    ids=["numbers", "boxes", "letters", "dollars", "fracs", "braces-then-box", "long-sum", "repeats"],
)
def test_a_megabyte_is_scored_in_well_under_a_second(completion, expected):
    start = time.perf_counter()
    score = math_verify_reward([completion], answer=["3"])
    assert time.perf_counter() - start < 0.5
    assert score == [expected]
