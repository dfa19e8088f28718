"""pass@k and maj@k (grpo/algorithm/sampled_accuracy.py) against values computed by hand, and maj@k
against a brute-force enumeration of every k-subset."""

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from grpo.algorithm.sampled_accuracy import majority_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        pytest.param(5, 2, 1, 0.4, id="pass-at-1-is-c-over-n"),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        pytest.param(5, 2, 2, 0.7, id="pass-at-2"),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        pytest.param(4, 0, 2, 0.0, id="none-correct"),  # C(4,2)/C(4,2) = 1
        pytest.param(4, 4, 1, 1.0, id="all-correct"),  # C(0,1) = 0
        pytest.param(3, 1, 3, 1.0, id="k-equals-n"),  # k = n: any correct sample passes; C(2,3) = 0
        pytest.param(3, 0, 3, 0.0, id="k-equals-n-none-correct"),  # C(3,3)/C(3,3) = 1
        pytest.param(6, 4, 3, 1.0, id="fewer-wrong-than-k"),  # n - c = 2 < k = 3: C(2,3) = 0
        pytest.param(10, 3, 5, 1 - 21 / 252, id="pass-at-5-of-10"),  # C(7,5) = 21, C(10,5) = 252
        pytest.param(8, 1, 4, 0.5, id="one-correct-half-the-subsets"),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
    ],
)
def test_pass_at_k_matches_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("n", "c", "k"), [(200, 7, 50), (1000, 3, 999), (64, 32, 16), (2000, 1, 1000)])
def test_pass_at_k_equals_the_papers_product_form(n, c, k):
    # Chen et al.'s numerically stable form: 1 - prod_{i=n-c+1}^{n} (1 - k/i); huge binomials, no overflow
    product = math.prod(1 - k / i for i in range(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(1 - product, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(4, 1, 0), (4, 1, 5), (4, 5, 2), (4, -1, 2), (0, 0, 1)],
    ids=["k-zero", "k-above-n", "c-above-n", "negative-c", "no-samples"],
)
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
        pass_at_k(n, c, k)


A, B, C = "72", "71", "70"  # A is the correct answer throughout


@pytest.mark.parametrize(
    ("answers", "k", "expected"),
    [
        pytest.param([A, A, A], 2, 1.0, id="unanimous-correct"),
        pytest.param([B, B, C], 3, 0.0, id="no-correct-answer"),
        pytest.param([None, None, None], 1, 0.0, id="no-answers-at-all"),
        # k = 1: the vote is the sample itself, maj@1 = c / n = pass@1
        pytest.param([A, A, B], 1, 2 / 3, id="maj-at-1-is-c-over-n"),
        # subsets {A,A}: A wins; {A,B} twice: a tie, 1/2 each -> (1 + 1/2 + 1/2) / 3
        pytest.param([A, A, B], 2, 2 / 3, id="two-way-ties-score-half"),
        pytest.param([A, A, B], 3, 1.0, id="k-equals-n-majority"),  # 2 votes against 1
        pytest.param([A, B], 2, 0.5, id="k-equals-n-tie"),
        # {A,None} twice: A is the only vote, wins; {None,None}: no majority, 0 -> 2/3
        pytest.param([A, None, None], 2, 2 / 3, id="abstentions-do-not-vote"),
        pytest.param([A, None, None], 3, 1.0, id="one-vote-against-abstentions"),
        # k = 2: {A,B} x3 ties (1/2 each), {B,B} x3 lose -> 1.5 / 6; k = 3: B always has 2 or 3 votes
        pytest.param([A, B, B, B], 2, 0.25, id="minority-ties-at-k-2"),
        pytest.param([A, B, B, B], 3, 0.0, id="minority-loses-at-k-3"),
        # {A,B,C} with either C: a three-way tie, 1/3 each; {A,C,C}, {B,C,C}: C wins -> (2/3) / 4
        pytest.param([A, B, C, C], 3, 1 / 6, id="three-way-tie"),
        # two distinct correct answers (72 and 72.0005 are both within tolerance): a three-way tie,
        # each correct one wins 1/3 of it -> 2/3
        pytest.param([A, "72.0005", B], 3, 2 / 3, id="two-correct-answers-both-count"),
        # k = 4 of 5, each subset leaves one sample out: an A (x2) -> {A,B,B,None}, B wins: 0; a B (x2)
        # -> {A,A,B,None}, A wins: 1; the None -> {A,A,B,B}, a tie: 1/2. (0 + 0 + 1 + 1 + 1/2) / 5
        pytest.param([A, A, B, B, None], 4, 0.5, id="k-below-n-with-an-abstention"),
    ],
)
def test_majority_at_k_matches_hand_values(answers, k, expected):
    correct = [a in (A, "72.0005") for a in answers]
    assert majority_at_k(answers, correct, k) == pytest.approx(expected, abs=1e-15)


def brute_force_majority_at_k(answers, correct, k) -> Fraction:
    """Every k-subset scored one by one: 1 / (number tied for most votes) if a correct answer is among them."""
    is_correct = dict(zip(answers, correct))
    total = Fraction(0)
    for subset in itertools.combinations(range(len(answers)), k):
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if votes:
            top = max(votes.values())
            leaders = [a for a, v in votes.items() if v == top]
            total += Fraction(sum(is_correct[a] for a in leaders), len(leaders))
    return total / math.comb(len(answers), k)


@pytest.mark.parametrize("case", range(40))
def test_majority_at_k_equals_scoring_every_subset(case):
    rng = random.Random(case)
    n = rng.randint(1, 11)
    pool = [A, B, C, "69", None][: rng.randint(1, 5)]
    answers = [rng.choice(pool) for _ in range(n)]
    correct = [a == A for a in answers]
    k = rng.randint(1, n)
    assert majority_at_k(answers, correct, k) == pytest.approx(float(brute_force_majority_at_k(answers, correct, k)),
                                                              abs=1e-15)


@pytest.mark.parametrize(
    ("answers", "correct", "k", "message"),
    [
        pytest.param([A, B], [True], 1, "2 answers and 1 flags", id="length-mismatch"),
        pytest.param([A, B], [True, False], 3, "n=2, k=3", id="k-above-n"),
        pytest.param([A, B], [True, False], 0, "n=2, k=0", id="k-zero"),
        pytest.param([], [], 1, "n=0, k=1", id="no-samples"),
        pytest.param([None, B], [True, False], 1, "without an answer", id="abstention-marked-correct"),
        pytest.param([A, A], [True, False], 1, "'72' is marked both", id="same-answer-two-verdicts"),
    ],
)
def test_majority_at_k_rejects_inconsistent_input(answers, correct, k, message):
    with pytest.raises(ValueError, match=message):
        majority_at_k(answers, correct, k)
