import math

import pytest
import torch

from grpo.variants import (
    dual_clip_surrogate,
    groups_with_signal,
    gspo_surrogate,
    high_entropy_token_mask,
    overlong_mask,
    soft_overlong_penalty,
)


def _logp_for_ratios(ratios):
    # old_logp = 0, so rho = exp(logp) = the ratio we ask for.
    logp = torch.log(torch.tensor(ratios, dtype=torch.float64)).requires_grad_(True)
    return logp, torch.zeros_like(logp)


# ---------------------------------------------------------------- dual clip

def test_dual_clip_hand_values_and_gradients():
    ratios = [[0.5, 1.0, 1.5, 4.0]] * 3
    logp, old = _logp_for_ratios(ratios)
    adv = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    loss = dual_clip_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    # A=+1: max(-r, -clip(r, 0.8, 1.28)):  r=0.5 -> max(-0.5,-0.8)=-0.5; r=1 -> -1;
    #       r=1.5 -> max(-1.5,-1.28)=-1.28; r=4 -> max(-4,-1.28)=-1.28
    # A=-1: max(r, clip(r)) = 0.8, 1, 1.5, 4; then dual cap min(., c*|A|=3) -> 0.8, 1, 1.5, 3
    # A=0 : 0 everywhere
    expected = torch.tensor(
        [[-0.5, -1.0, -1.28, -1.28], [0.8, 1.0, 1.5, 3.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    # d(-r*A)/dlogp = -A*r where the unclipped term is active, 0 where a clip is active:
    # A=+1: r=0.5 -> -0.5, r=1 -> -1, clipped -> 0, 0.  A=-1: r=0.5 clipped (0.8) -> 0,
    # r=1 -> 1, r=1.5 -> 1.5, r=4 dual-capped -> 0.
    expected_grad = torch.tensor(
        [[-0.5, -1.0, 0.0, 0.0], [0.0, 1.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(logp.grad, expected_grad)


def test_dual_clip_rejects_c_not_above_one():
    logp, old = _logp_for_ratios([[1.0]])
    with pytest.raises(AssertionError, match="clip_ratio_c"):
        dual_clip_surrogate(logp, old, torch.tensor([1.0], dtype=torch.float64), clip_ratio_c=1.0)


def test_dual_clip_rejects_wrong_advantage_shape():
    logp, old = _logp_for_ratios([[1.0, 1.0]])
    with pytest.raises(AssertionError, match="advantages"):
        dual_clip_surrogate(logp, old, torch.ones(1, 2, dtype=torch.float64))


# ---------------------------------------------------------------- GSPO

def test_gspo_sequence_ratio_values_and_clipping():
    # row 0: mask [1,1,0], log-ratios [0.1, 0.3, 5.0 (masked)] -> mean 0.2, s = e^0.2 = 1.2214
    # row 1: mask [1,1,1], log-ratios 0 -> s = 1
    # row 2: all masked -> length clamps to 1, s = e^0 = 1 (no NaN)
    old = torch.zeros(3, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3, 5.0], [0.0, 0.0, 0.0], [7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    # A=+1 on row 0: max(-1.2214, -clip(1.2214, 0.8, 1.2)) = -1.2, the same on every token.
    loss = gspo_surrogate(logp, old, torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), mask, 0.2, 0.2)
    expected = torch.tensor([[-1.2] * 3, [-1.0] * 3, [1.0] * 3], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)


def test_gspo_token_form_gradient_equals_sequence_gradient():
    # Unclipped region (wide eps). GSPO's sequence objective for one completion is -A * s_i with
    # s_i = exp(mean_t(logp_t - old_t)), so d/dlogp_t = -A * s_i / |y_i|.
    # Row 0: s = e^0.2, |y| = 2, A = -1 -> gradient e^0.2 / 2 = 0.61070 on each unmasked token.
    # Row 1: s = 1, |y| = 3, A = +1 -> gradient -1/3 on each token.
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    per_token = gspo_surrogate(logp, old, adv, mask, eps_low=0.9, eps_high=9.0)
    seq_mean_token_mean = ((per_token * mask).sum(-1) / mask.sum(-1)).sum()  # sum over rows
    seq_mean_token_mean.backward()
    g = math.exp(0.2) / 2
    expected = torch.tensor([[g, g, 0.0], [-1 / 3, -1 / 3, -1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


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

def test_groups_with_signal():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    assert groups_with_signal(rewards, 2).tolist() == [False, True, False, False]
    assert groups_with_signal(rewards, 4).tolist() == [True, True]


def test_groups_with_signal_rejects_ragged_batch():
    with pytest.raises(AssertionError, match="multiple of group_size"):
        groups_with_signal(torch.zeros(5), 2)
