import math

import pytest
import torch

from grpo.label_free import (
    label_free_rewards,
    majority_vote_reward,
    self_certainty_from_logprobs,
    self_certainty_from_stats,
    self_certainty_stats,
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


def test_self_certainty_from_logprobs_hand_values():
    # V=2. Uniform (0.5, 0.5): -ln2 - ln0.5 = 0.
    # (0.8, 0.2): -ln2 - (ln0.8 + ln0.2)/2 = -0.693147 + (0.223144 + 1.609438)/2 = 0.223144
    lp = torch.log(torch.tensor([[[0.5, 0.5], [0.8, 0.2], [0.8, 0.2]], [[0.8, 0.2], [0.5, 0.5], [0.5, 0.5]]]))
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = self_certainty_from_logprobs(lp, mask)
    # row 0: mean(0, 0.223144) = 0.111572 (third token masked); row 1: all masked -> 0
    k = -math.log(2) - (math.log(0.8) + math.log(0.2)) / 2
    torch.testing.assert_close(out, torch.tensor([k / 2, 0.0]))


def test_self_certainty_from_stats_matches_full_vocab():
    # z = (ln3, 0, 0, 0): p = (1/2, 1/6, 1/6, 1/6); logsumexp = ln6, mean z = ln3/4.
    # KL = -ln4 - ln3/4 + ln6 = 0.405465 - 0.274653 = 0.130812
    z = torch.tensor([[[math.log(3), 0.0, 0.0, 0.0]]])
    mean_logit, lse = self_certainty_stats(z)
    out = self_certainty_from_stats(mean_logit, lse, torch.ones(1, 1), vocab_size=4)
    assert out.item() == pytest.approx(math.log(1.5) - math.log(3) / 4, abs=1e-6)
    # and on random logits the stats route equals the full-vocabulary route
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    full = self_certainty_from_logprobs(torch.log_softmax(logits, dim=-1), mask)
    stats = self_certainty_from_stats(*self_certainty_stats(logits), mask, vocab_size=11)
    torch.testing.assert_close(stats, full)
    assert full[2].item() == 0.0


def test_self_certainty_stats_work_chunk_wise():
    logits = torch.randn(2, 6, 7, generator=torch.Generator().manual_seed(1))
    whole = self_certainty_stats(logits)
    parts = [self_certainty_stats(chunk) for chunk in logits.split(2, dim=1)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts], dim=1), whole[0])
    torch.testing.assert_close(torch.cat([p[1] for p in parts], dim=1), whole[1])


def test_within_group_rank_hand_values():
    # group 1 (0.3, 0.1, 0.2): ranks 2, 0, 1 of G-1 = 2 -> 1, 0, 0.5
    # group 2 (0.5, 0.5, 0.9): the two 0.5 share ranks 0 and 1 -> 0.5 each / 2 = 0.25; 0.9 -> 1
    # group 3 all equal -> 0.5
    values = torch.tensor([0.3, 0.1, 0.2, 0.5, 0.5, 0.9, 4.0, 4.0, 4.0])
    expected = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.25, 1.0, 0.5, 0.5, 0.5])
    torch.testing.assert_close(within_group_rank(values, 3), expected)


def test_label_free_rewards_combination():
    # G=4, answers vote "42" -> (1, 0, 1, 0); certainty (0.9, 0.8, 0.1, 0.5) ranks 1, 2/3, 0, 1/3
    # r = vote + 0.5 * rank = 1.5, 0.3333, 1.0, 0.1667
    out = label_free_rewards(["42", "7", "42", None], torch.tensor([0.9, 0.8, 0.1, 0.5]), 4)
    torch.testing.assert_close(out, torch.tensor([1.5, 1 / 3, 1.0, 1 / 6]))


def test_label_free_rewards_equal_group_no_nan():
    # nothing to vote on and equal certainty: every completion gets 0.5 * 0.5 = 0.25
    out = label_free_rewards([None, None], torch.zeros(2), 2)
    torch.testing.assert_close(out, torch.tensor([0.25, 0.25]))


def test_label_free_rewards_bad_arguments():
    with pytest.raises(AssertionError, match="self_certainty"):
        label_free_rewards(["a", "b"], torch.zeros(3), 2)
    with pytest.raises(ValueError, match="certainty_weight"):
        label_free_rewards(["a", "b"], torch.zeros(2), 2, certainty_weight=-1.0)
    with pytest.raises(AssertionError, match="groups of at least 2"):
        label_free_rewards(["a", "b"], torch.zeros(2), 1)
