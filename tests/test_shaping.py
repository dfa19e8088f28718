"""Reward and token shaping (grpo/algorithm/shaping.py) and the group spread check, against hand values."""

import pytest
import torch

from grpo.algorithm.groups import has_spread
from grpo.algorithm.shaping import high_entropy_token_mask, overlong_mask, soft_overlong_penalty, weighted_total


# ---------------------------------------------------------------- overlong

def test_overlong_mask_zeroes_truncated_rows_float_and_bool():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    truncated = torch.tensor([False, True, False])
    out = overlong_mask(mask, truncated)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    out_bool = overlong_mask(mask.bool(), truncated)
    assert out_bool.dtype == torch.bool
    assert out_bool.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    assert mask[1].sum() == 3  # input untouched


@pytest.mark.parametrize(
    "length, expected",
    [
        (0, 0.0),
        (80, 0.0),  # = max_len - cache: still free
        (90, -0.5),  # (80 - 90) / 20
        (95, -0.75),  # (80 - 95) / 20
        (100, -1.0),  # = max_len
        (101, -1.0),  # beyond: flat -1
        (130, -1.0),
    ],
)
def test_soft_overlong_penalty_dapo_eq13(length, expected):
    out = soft_overlong_penalty(torch.tensor([length]), max_len=100, cache_len=20)
    assert out.item() == pytest.approx(expected)


@pytest.mark.parametrize("cache_len", [0, -5, 101])
def test_soft_overlong_penalty_rejects_bad_cache(cache_len):
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_penalty(torch.tensor([10]), max_len=100, cache_len=cache_len)


# ---------------------------------------------------------------- entropy selection

def test_high_entropy_mask_keeps_top_fraction_over_whole_batch():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.9, 0.2, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    # n = 7 unmasked, k = ceil(0.5 * 7) = 4: 0.9 (0,1), 0.9 (1,0), 0.7 (0,3), 0.5 (0,2);
    # the masked 9.0 is never picked.
    out = high_entropy_token_mask(entropy, mask, 0.5)
    assert out.dtype == mask.dtype
    assert out.tolist() == [[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]


def test_high_entropy_mask_ties_broken_by_position():
    entropy = torch.full((2, 2), 0.5)
    mask = torch.ones(2, 2, dtype=torch.bool)
    # 4 tied tokens, k = 2 -> the first two in flattened order: row 0.
    out = high_entropy_token_mask(entropy, mask, 0.5)
    assert out.tolist() == [[True, True], [False, False]]


def test_high_entropy_mask_float_noise_does_not_add_a_token():
    # 0.7 * 10 = 7.000000000000001 in floats; a bare ceil would keep 8.
    out = high_entropy_token_mask(torch.arange(10.0).view(1, 10), torch.ones(1, 10), 0.7)
    assert out.sum().item() == 7
    assert out[0, :3].sum().item() == 0  # the three lowest entropies are dropped


def test_high_entropy_mask_all_masked_rows():
    entropy = torch.rand(2, 3)
    assert high_entropy_token_mask(entropy, torch.zeros(2, 3), 0.2).sum().item() == 0
    mask = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    out = high_entropy_token_mask(torch.tensor([[5.0, 5.0, 5.0], [0.1, 0.2, 0.3]]), mask, 0.5)
    # n = 2, k = 1: the 0.2 at (1,1); the empty row stays empty.
    assert out.tolist() == [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_high_entropy_mask_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="top_fraction"):
        high_entropy_token_mask(torch.rand(1, 2), torch.ones(1, 2), fraction)


# ---------------------------------------------------------------- dynamic sampling

def test_has_spread():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    assert has_spread(rewards, 2).tolist() == [False, True, False, False]
    assert has_spread(rewards, 4).tolist() == [True, True]


def test_has_spread_rejects_ragged_batch():
    with pytest.raises(ValueError, match="not divisible by group_size 2"):
        has_spread(torch.zeros(5), 2)


# ---------------------------------------------------------------- reward totals

def test_weighted_total_skips_not_applicable_scores():
    # row 0: 1*0.5 + 2*1 = 2.5; row 1: NaN adds nothing -> 2*1 = 2; row 2: all NaN -> 0
    matrix = torch.tensor([[1.0, 2.0], [float("nan"), 2.0], [float("nan"), float("nan")]])
    assert weighted_total(matrix, torch.tensor([0.5, 1.0])).tolist() == [2.5, 2.0, 0.0]
