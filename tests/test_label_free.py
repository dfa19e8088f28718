
import pytest
import torch

from grpo.label_free import (
    majority_vote_reward,
    within_group_rank,
)


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
def test_majority_vote_table(answers, expected):
    assert majority_vote_reward(answers, 4) == expected


def test_majority_vote_groups_are_independent():
    # group 1 majority "a", group 2 majority "b", although "a" is the batch majority
    assert majority_vote_reward(["a", "a", "a", "b", "b", "a"], 3) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_majority_vote_rejects_ragged_batch():
    with pytest.raises(AssertionError, match="multiple of group_size"):
        majority_vote_reward(["a", "b", "c"], 2)


def test_within_group_rank_hand_values():
    # group 1 (0.3, 0.1, 0.2): ranks 2, 0, 1 of G-1 = 2 -> 1, 0, 0.5
    # group 2 (0.5, 0.5, 0.9): the two 0.5 share ranks 0 and 1 -> 0.5 each / 2 = 0.25; 0.9 -> 1
    # group 3 all equal -> 0.5
    values = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.5, 0.9, 4.0, 4.0, 4.0])
    expected = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.25, 1.0, 0.5, 0.5, 0.5])
    torch.testing.assert_close(within_group_rank(values, 3), expected)
