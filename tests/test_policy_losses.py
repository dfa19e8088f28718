"""The registered policy losses other than PPO's clip (tests/test_loss.py), against hand values."""

import math

import pytest
import torch

from grpo.algorithm.loss import POLICY_LOSSES, ClipRange

dual_clip, gspo = POLICY_LOSSES["dual_clip"].fn, POLICY_LOSSES["gspo"].fn


def _logp_for_ratios(ratios):
    # old_logp = 0, so rho = exp(logp) = the ratio we ask for.
    logp = torch.log(torch.tensor(ratios, dtype=torch.float64)).requires_grad_(True)
    return logp, torch.zeros_like(logp)


# ---------------------------------------------------------------- dual clip

def test_dual_clip_hand_values_and_gradients():
    ratios = [[0.5, 1.0, 1.5, 4.0]] * 3
    logp, old = _logp_for_ratios(ratios)
    adv = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    out = dual_clip(logp, old, adv, torch.ones_like(logp), ClipRange(0.2, 0.28, 3.0))
    loss = out.per_token
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
    # Its own indicators: PPO's clip where the gradient is 0 by clipping, the cap where it is 0 by it.
    assert out.indicators["clip_frac"].tolist() == [[False, False, True, True], [True, False, False, False],
                                                     [False] * 4]
    assert out.indicators["dual_clip_frac"].tolist() == [[False] * 4, [False, False, False, True], [False] * 4]


def test_dual_clip_rejects_c_not_above_one():
    logp, old = _logp_for_ratios([[1.0]])
    with pytest.raises(ValueError, match="dual_clip_c > 1"):
        dual_clip(logp, old, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1), ClipRange(dual_clip_c=1.0))


def test_dual_clip_rejects_wrong_advantage_shape():
    logp, old = _logp_for_ratios([[1.0, 1.0]])
    with pytest.raises(AssertionError):
        dual_clip(logp, old, torch.ones(2, dtype=torch.float64), torch.ones(1, 2), ClipRange())  # (B,) = (1,)
    with pytest.raises(AssertionError):
        dual_clip(logp, old, torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 2), ClipRange())  # (B, T) = (1, 2)


# ---------------------------------------------------------------- GSPO

def test_gspo_sequence_ratio_values_and_clipping():
    # row 0: mask [1,1,0], log-ratios [0.1, 0.3, 5.0 (masked)] -> mean 0.2, s = e^0.2 = 1.2214
    # row 1: mask [1,1,1], log-ratios 0 -> s = 1
    # row 2: all masked -> length clamps to 1, s = e^0 = 1 (no NaN)
    old = torch.zeros(3, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3, 5.0], [0.0, 0.0, 0.0], [7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    # A=+1 on row 0: max(-1.2214, -clip(1.2214, 0.8, 1.2)) = -1.2, the same on every token.
    out = gspo(logp, old, torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), mask, ClipRange(0.2, 0.2))
    expected = torch.tensor([[-1.2] * 3, [-1.0] * 3, [1.0] * 3], dtype=torch.float64)
    torch.testing.assert_close(out.per_token, expected)
    # The clip indicator comes from the sequence ratio: all of row 0's tokens (s = 1.22 > 1.2, A > 0).
    assert out.indicators["clip_frac"].tolist() == [[True] * 3, [False] * 3, [False] * 3]


def test_gspo_token_form_gradient_equals_sequence_gradient():
    # Unclipped region (wide eps). GSPO's sequence objective for one completion is -A * s_i with
    # s_i = exp(mean_t(logp_t - old_t)), so d/dlogp_t = -A * s_i / |y_i|.
    # Row 0: s = e^0.2, |y| = 2, A = -1 -> gradient e^0.2 / 2 = 0.61070 on each unmasked token.
    # Row 1: s = 1, |y| = 3, A = +1 -> gradient -1/3 on each token.
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    per_token = gspo(logp, old, adv, mask, ClipRange(0.9, 9.0)).per_token
    seq_mean_token_mean = ((per_token * mask).sum(-1) / mask.sum(-1)).sum()  # sum over rows
    seq_mean_token_mean.backward()
    g = math.exp(0.2) / 2
    expected = torch.tensor([[g, g, 0.0], [-1 / 3, -1 / 3, -1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


def test_cispo_clips_the_weight_not_the_gradient_by_hand():
    """CISPO: loss = -sg(min(rho, 1 + high)) x A x logp. Tokens: rho = e^ln6 = 6 with A = +1 (weight capped at
    1 + 4 = 5, counted in clip_frac), rho = .5 with A = +1 (weight .5), rho = 6 with A = -1 (capped, not counted:
    the cap only matters for a positive advantage's push). d loss / d logp = -weight x A, never 0."""
    from grpo.algorithm.loss import cispo_loss

    old = torch.log(torch.tensor([[0.1, 0.4, 0.1]]))
    logp = torch.log(torch.tensor([[0.6, 0.2, 0.6]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    out = cispo_loss(logp, old, adv, torch.ones(1, 3), ClipRange(0.2, 4.0))
    weights = torch.tensor([[5.0, 0.5, 5.0]])
    torch.testing.assert_close(out.per_token, -weights * adv * logp.detach())
    out.per_token.sum().backward()
    torch.testing.assert_close(logp.grad, -weights * adv)
    assert out.indicators["clip_frac"].tolist() == [[True, False, False]]


def test_the_entropy_bonus_subtracts_coef_times_entropy_by_hand():
    from grpo.algorithm.loss import with_entropy_bonus

    per_token, entropy = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, math.log(2)]])
    torch.testing.assert_close(with_entropy_bonus(per_token, entropy, 0.1),
                               torch.tensor([[1.0 - 0.05, 2.0 - 0.1 * math.log(2)]]))
    assert with_entropy_bonus(per_token, None, 0.0) is per_token
    with pytest.raises(ValueError, match="with_entropy=True"):
        with_entropy_bonus(per_token, None, 0.1)
