import math

import pytest
import torch

from grpo.algorithm.shaping import weighted_total
from grpo.research.reward_weighting import criterion_spread, criterion_weights, separation_weights


def combine_rewards(matrix, base, group_size, dynamic, floor=0.0):
    """The total the trainer computes (grpo/training/reward_shaping.py): the weighted sum under this batch's weights."""
    return weighted_total(matrix, criterion_weights(matrix, base, group_size, dynamic, floor))

NAN = float("nan")

# Two groups of G=2, criteria (a, b):
#   a: g1 [1, 0] -> population std 0.5; g2 [1, 1] -> 0.      spread_a = (0.5 + 0) / 2 = 0.25
#   b: g1 [0, 0] -> 0;                 g2 [1, 0.5] -> 0.25.   spread_b = (0 + 0.25) / 2 = 0.125
TWO_CRITERIA = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.5]], dtype=torch.float64)


def test_criterion_spread_hand_values():
    torch.testing.assert_close(criterion_spread(TWO_CRITERIA, 2), torch.tensor([0.25, 0.125], dtype=torch.float64))


def test_separation_weights_are_spread_shares():
    # shares: 0.25 / 0.375 = 2/3, 0.125 / 0.375 = 1/3
    torch.testing.assert_close(separation_weights(TWO_CRITERIA, 2), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_dynamic_weights_keep_human_prior_and_total():
    # raw = base * share = [1 * 2/3, 3 * 1/3] = [2/3, 1], sum 5/3; rescaled to sum(base) = 4:
    # [2/3 * 12/5, 1 * 12/5] = [1.6, 2.4]
    base = torch.tensor([1.0, 3.0])
    w = criterion_weights(TWO_CRITERIA, base, 2, dynamic=True)
    torch.testing.assert_close(w, torch.tensor([1.6, 2.4], dtype=torch.float64))
    # rows: [1, 0] -> 1.6; [0, 0] -> 0; [1, 1] -> 4.0; [1, 0.5] -> 1.6 + 1.2 = 2.8
    out = combine_rewards(TWO_CRITERIA, base, 2, dynamic=True)
    torch.testing.assert_close(out, torch.tensor([1.6, 0.0, 4.0, 2.8], dtype=torch.float64))
    # static: [1, 0] -> 1; [0, 0] -> 0; [1, 1] -> 4; [1, 0.5] -> 2.5
    static = combine_rewards(TWO_CRITERIA, base, 2, dynamic=False)
    torch.testing.assert_close(static, torch.tensor([1.0, 0.0, 4.0, 2.5], dtype=torch.float64))


# One group of G=4, criteria (format, correct, impossible):
#   format always met (saturated), impossible never met, correct [1, 0, 0, 0].
SATURATED = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def test_saturated_and_unreachable_criteria_get_zero_weight():
    base = torch.tensor([1.0, 1.0, 1.0])
    # shares [0, 1, 0]; weights rescaled to sum 3 -> [0, 3, 0]
    torch.testing.assert_close(criterion_weights(SATURATED, base, 4, dynamic=True), torch.tensor([0.0, 3.0, 0.0]))
    torch.testing.assert_close(combine_rewards(SATURATED, base, 4, dynamic=True), torch.tensor([3.0, 0.0, 0.0, 0.0]))


def test_floor_keeps_silent_criteria_alive():
    # shares [0, 1, 0] -> max(., 0.1) = [0.1, 1, 0.1], sum 1.2 -> [1/12, 10/12, 1/12]
    out = separation_weights(SATURATED, 4, floor=0.1)
    torch.testing.assert_close(out, torch.tensor([1 / 12, 10 / 12, 1 / 12]))


def test_nearly_saturated_format_stops_dominating():
    # Groups of G=4; format fails once in group 1 only, correctness varies in both groups.
    #   format : g1 [1, 1, 1, 0] std sqrt(3)/4 = 0.4330; g2 [1, 1, 1, 1] std 0 -> spread 0.2165
    #   correct: g1 [1, 1, 0, 0] std 0.5;                 g2 [1, 0, 0, 0] std 0.4330 -> spread 0.4665
    rewards = torch.tensor(
        [[1, 1], [1, 1], [1, 0], [0, 0], [1, 1], [1, 0], [1, 0], [1, 0]], dtype=torch.float64
    )
    base = torch.tensor([1.0, 1.0])
    w = criterion_weights(rewards, base, 4, dynamic=True)
    spread_f, spread_c = math.sqrt(3) / 8, (0.5 + math.sqrt(3) / 4) / 2
    expected_f = 2 * spread_f / (spread_f + spread_c)  # 0.6340
    torch.testing.assert_close(w, torch.tensor([expected_f, 2 - expected_f], dtype=torch.float64))
    # In group 1 the format failure (row 3) and the wrong-but-formatted answer (row 2) were a full
    # point apart with static weights (1 vs 0); dynamic weights shrink that to 0.634 while a
    # correct answer still beats a wrong one by 1.366.
    dyn = combine_rewards(rewards, base, 4, dynamic=True)
    assert dyn[2] - dyn[3] == pytest.approx(expected_f)
    assert dyn[1] - dyn[2] == pytest.approx(2 - expected_f)


def test_nan_means_not_applicable():
    # G=3, one criterion. g1 [1, NaN, 0]: 2 valid values, std 0.5. g2 [NaN, NaN, 1]: 1 valid
    # value, cannot show contrast, left out. spread = 0.5.
    rewards = torch.tensor([[1.0], [NAN], [0.0], [NAN], [NAN], [1.0]])
    torch.testing.assert_close(criterion_spread(rewards, 3), torch.tensor([0.5]))
    out = combine_rewards(rewards, torch.tensor([2.0]), 3, dynamic=True)
    # single criterion: share 1, weight 2; NaN rows contribute 0
    torch.testing.assert_close(out, torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, 2.0]))
    assert not torch.isnan(out).any()


def test_all_nan_and_all_equal_give_uniform_shares_and_no_nan():
    rewards = torch.tensor([[NAN, 1.0], [NAN, 1.0]])
    # neither criterion separates -> shares 1/2 each -> dynamic weights = base
    torch.testing.assert_close(separation_weights(rewards, 2), torch.tensor([0.5, 0.5]))
    out = combine_rewards(rewards, torch.tensor([1.0, 2.0]), 2, dynamic=True)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0]))


def test_zero_base_weight_on_every_separating_criterion_falls_back_to_base():
    # only criterion 0 separates, but its base weight is 0 -> raw weights all 0 -> base
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    w = criterion_weights(rewards, torch.tensor([0.0, 1.0]), 2, dynamic=True)
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0]))


def test_inputs_are_not_mutated():
    rewards = TWO_CRITERIA.clone()
    base = torch.tensor([1.0, 3.0])
    combine_rewards(rewards, base, 2, dynamic=True)
    assert torch.equal(rewards, TWO_CRITERIA) and base.tolist() == [1.0, 3.0]


def test_user_errors():
    with pytest.raises(ValueError, match="non-negative base weights"):
        criterion_weights(TWO_CRITERIA, torch.tensor([1.0, -1.0]), 2, dynamic=True)
    with pytest.raises(ValueError, match="floor"):
        separation_weights(TWO_CRITERIA, 2, floor=1.0)
    with pytest.raises(ValueError, match="not divisible by group_size 3"):
        separation_weights(TWO_CRITERIA, 3)
    with pytest.raises(AssertionError, match="base_weights"):
        combine_rewards(TWO_CRITERIA, torch.tensor([1.0]), 2, dynamic=False)
