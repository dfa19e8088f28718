import pytest

import rewards
from rewards.majority_vote import majority_vote_scores

A = "#### The final answer is {}"


@pytest.mark.parametrize(
    "completions, prompts, expected",
    [
        # 72 wins 2:1 in prompt p (and "$72" and "72.0" parse to the same number)
        ([A.format(72), A.format("$72"), A.format(5)], ["p", "p", "p"], [1.0, 1.0, 0.0]),
        ([A.format("72.0"), A.format(72), "no answer"], ["p", "p", "p"], [1.0, 1.0, 0.0]),
        # two prompts interleaved are voted separately; a 1:1 tie goes to the first answer
        ([A.format(1), A.format(2), A.format(3), A.format(2)], ["p", "q", "p", "q"], [1.0, 1.0, 0.0, 1.0]),
        # empty strings, no answers and hostile text never win and never raise
        (["", "####", "x" * 100_000], ["p", "p", "p"], [0.0, 0.0, 0.0]),
        # a lone completion has nobody to agree with
        ([A.format(7)], ["p"], [0.0]),
    ],
)
def test_majority_vote_table(completions, prompts, expected):
    assert rewards.get("majority_vote")(completions, prompts=prompts, answer=[None] * len(completions)) == expected


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["42", "7", "42", None], [1.0, 0.0, 1.0, 0.0]),  # 42 has 2 votes
        (["1", "2", "2", "1"], [1.0, 0.0, 0.0, 1.0]),  # tie 2-2: "1" appears first
        (["3", "5", "8", "13"], [1.0, 0.0, 0.0, 0.0]),  # all distinct: first answer wins the tie
        ([None, None, None, None], [0.0, 0.0, 0.0, 0.0]),  # nothing to vote on
        ([None, None, "9", None], [0.0, 0.0, 1.0, 0.0]),  # one answer wins, None never does
        (["", "", "0", None], [1.0, 1.0, 0.0, 0.0]),  # "" is an answer as given: normalize upstream
        (["72", "72.0", "72.0", "$72"], [0.0, 1.0, 1.0, 0.0]),  # exact comparison
    ],
)
def test_majority_vote_scores_table(answers, expected):
    assert majority_vote_scores(answers, 4) == expected


def test_majority_vote_groups_are_independent():
    # group 1 majority "a", group 2 majority "b", although "a" is the batch majority
    assert majority_vote_scores(["a", "a", "a", "b", "b", "a"], 3) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_majority_vote_rejects_ragged_batch():
    with pytest.raises(ValueError, match="multiple of group_size"):
        majority_vote_scores(["a", "b", "c"], 2)
