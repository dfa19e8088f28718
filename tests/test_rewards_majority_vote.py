import pytest

import rewards
from rewards.majority_vote import majority_vote_scores

A = "#### The final answer is {}"


@pytest.mark.parametrize(
    "completions, prompts, expected",
    [
        # 72 wins 2:1 in prompt p (and "$72" and "72.0" parse to the same number)
        pytest.param(
            [A.format(72), A.format("$72"), A.format(5)], ["p", "p", "p"], [1.0, 1.0, 0.0],
            id="dollar-form-agrees",
        ),
        pytest.param(
            [A.format("72.0"), A.format(72), "no answer"], ["p", "p", "p"], [1.0, 1.0, 0.0], id="decimal-form-agrees"
        ),
        # two prompts interleaved are voted separately; a 1:1 tie goes to the first answer
        pytest.param(
            [A.format(1), A.format(2), A.format(3), A.format(2)], ["p", "q", "p", "q"], [1.0, 1.0, 0.0, 1.0],
            id="interleaved-prompts",
        ),
        # empty strings, no answers and hostile text never win and never raise
        pytest.param(["", "####", "x" * 100_000], ["p", "p", "p"], [0.0, 0.0, 0.0], id="no-answers-never-win"),
        # a lone completion has nobody to agree with
        pytest.param([A.format(7)], ["p"], [0.0], id="lone-completion"),
    ],
)
def test_majority_vote_table(completions, prompts, expected):
    assert rewards.get("majority_vote")(completions, prompts=prompts, answer=[None] * len(completions)) == expected


@pytest.mark.parametrize(
    "answers, expected",
    [
        pytest.param(["42", "7", "42", None], [1.0, 0.0, 1.0, 0.0], id="clear-majority"),  # 42 has 2 votes
        pytest.param(["1", "2", "2", "1"], [1.0, 0.0, 0.0, 1.0], id="tie-goes-to-first"),  # tie 2-2: "1" appears first
        pytest.param(  # all distinct: first answer wins the tie
            ["3", "5", "8", "13"], [1.0, 0.0, 0.0, 0.0], id="all-distinct"
        ),
        pytest.param([None, None, None, None], [0.0, 0.0, 0.0, 0.0], id="no-answers"),  # nothing to vote on
        pytest.param(  # one answer wins, None never does
            [None, None, "9", None], [0.0, 0.0, 1.0, 0.0], id="single-answer"
        ),
        pytest.param(  # "" is an answer as given: normalize upstream
            ["", "", "0", None], [1.0, 1.0, 0.0, 0.0], id="empty-string-is-an-answer"
        ),
        pytest.param(["72", "72.0", "72.0", "$72"], [0.0, 1.0, 1.0, 0.0], id="exact-comparison"),  # exact comparison
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
