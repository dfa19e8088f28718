"""Accuracy of k sampled completions per problem, estimated from n >= k samples: pass@k and maj@k.

Both estimators average the k-sample score over every k-subset of the n samples (drawn without
replacement). The n samples are i.i.d. given the problem, so each k-subset is a draw of k samples
and the average is an unbiased estimate of the k-sample score, with less variance than scoring only
the first k samples (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", section
2.1, for pass@k; the same argument holds for any score of k samples, maj@k included).

Pure functions on counts, exact integer arithmetic rounded once at the end; no tensors, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    the chance that k samples drawn from the n hold a correct one.

    The paper writes it as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i) because numpy's C(n, k)
    overflows a float; Python's integers do not overflow and `int / int` is correctly rounded, so
    the ratio of exact binomials here is the exact value rounded once (the product rounds c times).
    n - c < k gives 1 (every k-subset holds a correct sample), c = 0 gives 0.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """Expected maj@k over the k-subsets of n samples: the chance that the majority answer of k
    samples is a correct one.

    answers: n final answers, None where a sample gave none; equal answers vote together, so
        normalize them first (evaluate.py votes with the parsed number: "72", "72.0" and "$72" agree).
    correct: n flags, whether each sample is correct; samples with the same answer must agree, and
        a sample without an answer is never correct.
    The vote, as in rewards/majority_vote.py: a sample without an answer does not vote; k samples
    without any answer have no majority and score 0. A tie for the most votes is broken uniformly at
    random, so a subset where a correct answer ties with t others scores 1 / (t + 1) (its expected
    score), not 0 or 1 by an arbitrary order. More than one distinct answer may be correct (72 and
    72.0005 are both within the GSM8K tolerance of 72): each one's wins count.
    k = n is the plain majority vote over all n samples.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError(f"maj@k needs one correctness flag per answer, got {n} answers and {len(correct)} flags")
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n, got n={n}, k={k}")
    correct_answers = {a for a, ok in zip(answers, correct) if ok}
    if None in correct_answers:
        raise ValueError("maj@k: a sample without an answer (None) is marked correct; it cannot win a vote")
    mixed = correct_answers & {a for a, ok in zip(answers, correct) if not ok}
    if mixed:
        raise ValueError(f"maj@k: answer {min(map(repr, mixed))} is marked both correct and incorrect; "
                         "equal answers must have one correctness")
    votes = Counter(a for a in answers if a is not None)
    abstentions = n - sum(votes.values())
    won = sum((_subsets_won(votes[a], [m for b, m in votes.items() if b != a], abstentions, k)
               for a in correct_answers), Fraction(0))
    return float(won / math.comb(n, k))


def _subsets_won(votes: int, rivals: list[int], abstentions: int, k: int) -> Fraction:
    """How many k-subsets an answer with `votes` samples wins, a tie with t rivals counting 1 / (t + 1).

    rivals: the sample count of every other answer; abstentions: samples without an answer.
    For each number j >= 1 of the answer's samples in the subset, count the ways to draw the other
    k - j samples so that no rival gets more than j, by how many rivals (t) get exactly j: a
    dynamic programme over the rivals, ways[s][t] for s samples drawn so far. A tie takes j samples
    per tied rival, so t <= (k - j) // j.
    """
    won = Fraction(0)
    for j in range(1, min(k, votes) + 1):
        rest, max_ties = k - j, (k - j) // j
        ways = [[math.comb(abstentions, s)] + [0] * max_ties for s in range(rest + 1)]  # abstentions go anywhere
        for count in rivals:
            grown = [[0] * (max_ties + 1) for _ in range(rest + 1)]
            for s, row in enumerate(ways):
                for t, w in enumerate(row):
                    if w:
                        for x in range(min(j, count, rest - s) + 1):  # x of this rival's samples drawn
                            grown[s + x][t + (x == j)] += w * math.comb(count, x)
            ways = grown
        won += math.comb(votes, j) * sum(Fraction(w, 1 + t) for t, w in enumerate(ways[rest]))
    return won
