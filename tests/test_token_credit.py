import pytest
import torch

from grpo.research.token_credit import discriminative_token_weights

# Tiny vocabulary: 0 = "<answer>" (format), 1 = "7", 2 = "9", 3 = "so", 5 = "hmm", 9 = padding.


def test_shared_format_token_gets_min_and_answer_token_max():
    # One group, G=2: high row [0, 1, 0] (reward 1), low row [0, 2, 0] (reward 0).
    # p_high = {0: 2/3, 1: 1/3}, p_low = {0: 2/3, 2: 1/3}
    # d(0) = 0, d(1) = d(2) = 1 -> raw u: token 0 -> 0.1, tokens 1, 2 -> 2.0
    # group sum = 4 * 0.1 + 2 * 2.0 = 4.4 over n = 6 tokens -> scale 6 / 4.4 = 1.363636
    # weights: 0.1 * 1.363636 = 0.136364, 2.0 * 1.363636 = 2.727273
    ids = torch.tensor([[0, 1, 0], [0, 2, 0]])
    w = discriminative_token_weights(ids, torch.ones(2, 3), torch.tensor([1.0, 0.0]), 2)
    lo, hi = 0.1 * 6 / 4.4, 2.0 * 6 / 4.4
    torch.testing.assert_close(w, torch.tensor([[lo, hi, lo], [lo, hi, lo]]))
    assert w.mean().item() == pytest.approx(1.0)


def test_partial_discrimination_ragged_mask_and_neutral_row():
    # One group, G=3, rewards [1, 0.5, 0], mean 0.5: row 0 high, row 1 neutral, row 2 low.
    ids = torch.tensor([[0, 3, 3, 1], [0, 5, 0, 0], [0, 3, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    # high (row 0, n=4): {0: 1/4, 3: 2/4, 1: 1/4};  low (row 2, n=2): {0: 1/2, 3: 1/2}
    # d(0) = |1/4 - 1/2| / (3/4) = 1/3;  d(3) = 0;  d(1) = 1;  d(5) = 0 (seen on neither side)
    # u = 0.1 + 1.9 d: token 0 -> 2.2/3 = 0.733333, tokens 3 and 5 -> 0.1, token 1 -> 2.0
    # group sum = 3 * 2.2/3 + 4 * 0.1 + 2.0 = 4.6 over n = 8 -> scale 8 / 4.6 = 1.739130
    s = 8 / 4.6
    a, b, c = 2.2 / 3 * s, 0.1 * s, 2.0 * s  # 1.275362, 0.173913, 3.478261
    w = discriminative_token_weights(ids, mask, torch.tensor([1.0, 0.5, 0.0]), 3)
    expected = torch.tensor([[a, b, b, c], [a, b, 0.0, 0.0], [a, b, 0.0, 0.0]])
    torch.testing.assert_close(w, expected)
    assert (w.sum() / mask.sum()).item() == pytest.approx(1.0)


def test_groups_are_independent_and_equal_rewards_give_one():
    # Group 1 (rows 0-1) as in the first test; group 2 (rows 2-3) has equal rewards -> weight 1,
    # and its second row is fully masked -> 0 there. Token 0 in group 2 must not change group 1.
    ids = torch.tensor([[0, 1, 0], [0, 2, 0], [0, 0, 0], [4, 4, 4]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    w = discriminative_token_weights(ids, mask, rewards, 2)
    lo, hi = 0.1 * 6 / 4.4, 2.0 * 6 / 4.4
    expected = torch.tensor([[lo, hi, lo], [lo, hi, lo], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(w, expected)


def test_fully_masked_side_leaves_uniform_weights():
    # G=2, rewards [1, 0] but the low row is fully masked: p_low = 0, every high token has d = 1,
    # u = 2.0 everywhere -> normalized to 1.
    ids = torch.tensor([[0, 1], [2, 2]])
    mask = torch.tensor([[1, 1], [0, 0]])
    w = discriminative_token_weights(ids, mask, torch.tensor([1.0, 0.0]), 2)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_all_masked_batch_is_zero_not_nan():
    ids = torch.zeros(2, 3, dtype=torch.long)
    w = discriminative_token_weights(ids, torch.zeros(2, 3), torch.tensor([1.0, 0.0]), 2)
    assert torch.equal(w, torch.zeros(2, 3))


def test_min_equals_max_is_plain_grpo():
    ids = torch.tensor([[0, 1, 0], [0, 2, 0]])
    w = discriminative_token_weights(ids, torch.ones(2, 3), torch.tensor([1.0, 0.0]), 2, min_weight=1.0, max_weight=1.0)
    torch.testing.assert_close(w, torch.ones(2, 3))


def test_inputs_not_mutated_and_bad_arguments_rejected():
    ids = torch.tensor([[0, 1], [0, 2]])
    mask = torch.tensor([[1, 1], [1, 0]])
    discriminative_token_weights(ids, mask, torch.tensor([1.0, 0.0]), 2)
    assert ids.tolist() == [[0, 1], [0, 2]] and mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match="min_weight"):
        discriminative_token_weights(ids, mask, torch.tensor([1.0, 0.0]), 2, min_weight=0.0)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        discriminative_token_weights(ids, mask, torch.tensor([1.0, 0.0]), 3)


def test_token_credit_scales_each_tokens_advantage():
    """tokens.credit=proxy through the objective's seam: one group of two rows, ids row 0 [5, 7] (reward 1),
    row 1 [5, 9] (reward 0). Token 5 is as frequent on both sides: d = 0, raw weight 0.1; 7 and 9 are one
    side's only: d = 1, raw weight 2. Normalized to mean 1 over the 4 tokens: x 4 / 4.2. A_t = w_t * A."""
    from grpo.objectives.token_credit import TokenCredit
    from grpo.runtime.config import TokensConfig

    ids = torch.tensor([[5, 7], [5, 9]])
    mask, rewards, advantages = torch.ones(2, 2), torch.tensor([1.0, 0.0]), torch.tensor([0.5, -0.5])
    scaled = TokenCredit(TokensConfig(credit="proxy")).scale(advantages, mask, ids, rewards, 2, None, None)
    w = torch.tensor([0.1, 2.0]) * 4 / 4.2
    torch.testing.assert_close(scaled, torch.stack([0.5 * w, -0.5 * w]))
    unchanged = TokenCredit(TokensConfig()).scale(advantages, mask, ids, rewards, 2, None, None)
    assert unchanged is advantages  # credit none: one advantage per completion, as GRPO
