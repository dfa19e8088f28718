"""GDPO's reward-decoupled advantages and the KL-Cov policy loss, against values computed by hand."""

import math

import pytest
import torch

from grpo.algorithm import decoupled_advantages, group_advantages
from grpo.algorithm.loss import ClipRange, kl_cov_loss, policy_loss_with_kl, ppo_loss, top_covariance_tokens

SQRT_HALF = math.sqrt(0.5)


def test_gdpo_keeps_apart_what_grpo_collapses():
    # Two groups of 2, rewards (format, correct). Group 1: (1, 0), (0, 0): totals 1, 0.
    # Group 2: (1, 1), (0, 0): totals 2, 0. GRPO normalizes each group's totals: both groups get
    # +-0.5 / std(Bessel of {1, 0}: sqrt(0.5)) = +-0.7071, the same, though group 2's best did more.
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    grpo = group_advantages(scores.sum(1), 2)
    torch.testing.assert_close(grpo, torch.tensor([1.0, -1.0, 1.0, -1.0]) * SQRT_HALF, atol=2e-4, rtol=0)
    # GDPO: each reward in its group: format is {1, 0} in both groups -> +-0.7071; correct is flat in
    # group 1 -> 0, {1, 0} in group 2 -> +-0.7071. Sums: 0.7071, -0.7071, 1.4142, -1.4142.
    # Over the batch: mean 0, Bessel std sqrt((0.5 + 0.5 + 2 + 2) / 3) = sqrt(5/3) = 1.2910
    # -> 0.5477, -0.5477, 1.0954, -1.0954.
    gdpo = decoupled_advantages(scores, torch.tensor([1.0, 1.0]), 2)
    torch.testing.assert_close(gdpo, torch.tensor([0.5477, -0.5477, 1.0954, -1.0954]), atol=2e-4, rtol=0)


def test_gdpo_by_hand_with_weights_and_a_group_of_four():
    # One group of 4. Reward 1: 1, 1, 0, 0 (mean 0.5, Bessel std sqrt(1/3) = 0.57735) -> +-0.8660.
    # Reward 2 (weight 2): 0, 1, 1, 0 -> -0.866, 0.866, 0.866, -0.866, times 2.
    # Sums: 0.866 - 1.732 = -0.866; 0.866 + 1.732 = 2.598; -0.866 + 1.732 = 0.866; -0.866 - 1.732 = -2.598.
    # Batch: mean 0, Bessel std sqrt((0.75 + 6.75 + 0.75 + 6.75) / 3) = sqrt(5) = 2.2361
    # -> -0.3873, 1.1619, 0.3873, -1.1619.
    scores = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    out = decoupled_advantages(scores, torch.tensor([1.0, 2.0]), 4)
    torch.testing.assert_close(out, torch.tensor([-0.3873, 1.1619, 0.3873, -1.1619]), atol=2e-4, rtol=0)


def test_gdpo_leaves_out_rows_a_reward_does_not_apply_to():
    # Group of 3, reward 1 applies to rows 0 and 1 only (NaN on row 2): 1, 0 -> +-0.7071, row 2: 0.
    # Reward 2: 0, 0, 3 -> mean 1, deviations -1, -1, 2, Bessel std sqrt(6/2) = 1.7321 -> -0.5774, -0.5774, 1.1547.
    # Sums: 0.1297, -1.2845, 1.1547; mean 0, Bessel std sqrt((0.01683 + 1.64994 + 1.33333) / 2) = 1.2248
    # -> 0.1059, -1.0487, 0.9428.
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [float("nan"), 3.0]])
    out = decoupled_advantages(scores, torch.tensor([1.0, 1.0]), 3)
    torch.testing.assert_close(out, torch.tensor([0.1059, -1.0487, 0.9428]), atol=3e-4, rtol=0)


def test_gdpo_flat_groups_get_exactly_zero_and_never_nan():
    scores = torch.tensor([[1.0, 0.5], [1.0, 0.5], [0.0, 1.0], [1.0, 0.0]])
    out = decoupled_advantages(scores, torch.tensor([1.0, 1.0]), 2)
    assert out[0] == 0 and out[1] == 0 and torch.isfinite(out).all()
    everything_flat = decoupled_advantages(torch.ones(4, 2), torch.tensor([1.0, 1.0]), 2)
    assert torch.equal(everything_flat, torch.zeros(4))
    # a reward of weight 0 changes nothing (the label-free recipe logs correctness this way)
    with_logged = decoupled_advantages(torch.cat([scores, torch.tensor([[5.0], [0.0], [1.0], [2.0]])], 1),
                                       torch.tensor([1.0, 1.0, 0.0]), 2)
    torch.testing.assert_close(with_logged, out)


def test_top_covariance_tokens_by_hand():
    # logp -1, -2 / -3, -4 (mean -2.5); advantages +1 / -1 per row (token mean 0).
    # cov = (logp + 2.5) * A: 1.5, 0.5 / 0.5, 1.5. ratio 0.5 of 4 tokens -> the 2 largest: (0,0), (1,1).
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    chosen = top_covariance_tokens(logp, torch.tensor([1.0, -1.0]), torch.ones(2, 2), 0.5)
    assert chosen.tolist() == [[True, False], [False, True]]
    # at least one token; masked tokens are never chosen; ties go to the earlier position
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # (0,1) masked
    # over (0,0), (1,0), (1,1): mean logp (-1 - 3 - 4) / 3 = -2.6667, mean A (1 - 1 - 1) / 3 = -0.3333
    # cov: (0,0) 1.6667 * 1.3333 = 2.2222; (1,0) -0.3333 * -0.6667 = 0.2222; (1,1) -1.3333 * -0.6667 = 0.8889
    one = top_covariance_tokens(logp, torch.tensor([1.0, -1.0]), mask, 1e-6)
    assert one.tolist() == [[True, False], [False, False]]
    two = top_covariance_tokens(logp, torch.tensor([1.0, -1.0]), mask, 0.7)  # floor(0.7 x 3) = 2
    assert two.tolist() == [[True, False], [False, True]]
    tied = top_covariance_tokens(torch.zeros(2, 2), torch.tensor([1.0, -1.0]), torch.ones(2, 2), 0.25)
    assert tied.tolist() == [[True, False], [False, False]]


def test_kl_cov_loss_by_hand():
    # logp as above, old_logp = logp - 0.1 (ratio e^0.1 = 1.10517), A = +1 / -1.
    # Every token: -A * 1.10517 -> -1.10517 (row 0), +1.10517 (row 1); the chosen (0,0) and (1,1) add
    # coef 2 x |0.1| = 0.2.
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    out = kl_cov_loss(logp, logp.detach() - 0.1, torch.tensor([1.0, -1.0]), torch.ones(2, 2),
                      ClipRange(kl_cov_ratio=0.5, kl_cov_coef=2.0))
    expected = torch.tensor([[-1.10517 + 0.2, -1.10517], [1.10517, 1.10517 + 0.2]])
    torch.testing.assert_close(out.per_token, expected, atol=1e-5, rtol=0)
    assert out.indicators["kl_cov_frac"].tolist() == [[True, False], [False, True]]
    # gradient of the penalty: coef * sign(logp - old) = +2 on the chosen tokens, on top of -A * ratio
    out.per_token.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.10517 + 2.0, -1.10517], [1.10517, 1.10517 + 2.0]]),
                               atol=1e-5, rtol=0)


def test_kl_cov_is_inert_on_policy():
    # logp == old_logp: ratio 1, |logp - old| = 0 with zero gradient: plain -A, the REINFORCE loss.
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = kl_cov_loss(logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2), ClipRange(kl_cov_ratio=1.0))
    torch.testing.assert_close(out.per_token, torch.tensor([[-0.5, -0.5]]))
    out.per_token.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5]]))


@pytest.mark.parametrize("name", [pytest.param("ppo", id="ppo"), pytest.param("dual_clip", id="dual-clip"),
                                  pytest.param("kl_cov", id="kl-cov")])
def test_per_token_advantages_equal_row_advantages_when_constant_per_row(name):
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]])
    old = logp - torch.tensor([[0.3, -0.4], [0.0, 0.2]])
    rows = torch.tensor([1.5, -2.0])
    clip = ClipRange(kl_cov_ratio=0.5)
    a = policy_loss_with_kl(name, logp, old, None, rows, torch.ones(2, 2), clip, 0.0)
    b = policy_loss_with_kl(name, logp, old, None, rows.unsqueeze(1).expand(2, 2), torch.ones(2, 2), clip, 0.0)
    torch.testing.assert_close(a.per_token, b.per_token)


def test_ppo_with_per_token_advantages_by_hand():
    # ratio e^0.3 = 1.34986 on token 0 (A = +2: clipped at 1.2 -> -2.4), e^-0.3 = 0.74082 on token 1
    # (A = -1: -max(... ) -> -min(0.74082 * -1, 0.8 * -1) = 0.8).
    logp = torch.tensor([[-1.0, -1.3]])
    out = ppo_loss(logp, torch.tensor([[-1.3, -1.0]]), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), ClipRange())
    torch.testing.assert_close(out.per_token, torch.tensor([[-2.4, 0.8]]), atol=1e-5, rtol=0)
    assert out.indicators["clip_frac"].tolist() == [[True, True]]


def test_gspo_refuses_per_token_advantages():
    with pytest.raises(ValueError, match="one advantage per completion"):
        policy_loss_with_kl("gspo", torch.zeros(1, 2), torch.zeros(1, 2), None, torch.zeros(1, 2), torch.ones(1, 2),
                            ClipRange(), 0.0)
