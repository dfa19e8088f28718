"""The GRPO math against values computed by hand (arithmetic in the comments)."""

import math

import pytest
import torch

from grpo import aggregate_loss, clipped_surrogate, group_advantages, kl_k3
from grpo.algorithm.loss import (POLICY_LOSSES, ClipRange, aggregation_counts, check_policy_loss, policy_loss_with_kl,
                                 register_policy_loss, token_logprobs)


def test_group_advantages_group_scale_by_hand():
    # rewards 1,0,0,0: mean .25, deviations .75,-.25,-.25,-.25
    # Bessel std: sqrt((.5625 + 3*.0625) / 3) = sqrt(.25) = .5
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0]), group_size=4)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4)
    torch.testing.assert_close(adv, expected)


def test_group_advantages_equal_group_is_exact_zero_never_nan():
    # The second group is all 2s: no signal, exactly 0. The first: 0,1 -> mean .5, std sqrt(.5)
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 2.0]), group_size=2)
    s = math.sqrt(0.5) + 1e-4
    torch.testing.assert_close(adv, torch.tensor([-0.5 / s, 0.5 / s, 0.0, 0.0]))
    # 0.1 cannot be represented exactly; the mean of three of them still must give 0.
    flat = group_advantages(torch.tensor([0.1, 0.1, 0.1]), group_size=3)
    assert torch.equal(flat, torch.zeros(3))
    assert not torch.isnan(group_advantages(torch.zeros(4), 2)).any()


def test_group_advantages_batch_scale_by_hand():
    # rewards 1,0 | 3,3: group means .5 and 3 -> centered .5,-.5,0,0
    # batch: mean 1.75, deviations -.75, -1.75, 1.25, 1.25
    # squares .5625 + 3.0625 + 1.5625 + 1.5625 = 6.75; / 3 = 2.25 -> std 1.5
    adv = group_advantages(torch.tensor([1.0, 0, 3, 3]), group_size=2, scale="batch")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0, 0]) / (1.5 + 1e-4))


def test_group_advantages_none_scale_is_centering_only():
    adv = group_advantages(torch.tensor([1.0, 0, 3, 3]), group_size=2, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))


@pytest.mark.parametrize(
    "rewards, group_size, message",
    [
        pytest.param(torch.zeros(5), 2, "not divisible by group_size 2", id="ragged"),
        pytest.param(torch.zeros(4), 1, "group_size must be >= 2", id="group-of-one"),
        pytest.param(torch.zeros(2, 2), 2, "must be 1-D", id="two-dimensional"),
    ],
)
def test_group_advantages_rejects_bad_shapes(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size)


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="rank")


def test_kl_k3_by_hand():
    # logp = log .5, ref = log .25: d = ref - logp = log .5 = -.693147
    # exp(d) - d - 1 = .5 + .693147 - 1 = .193147; equal log-probs give 0
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.3]]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([[0.5 + math.log(2) - 1, 0.0]]))


def test_clipped_surrogate_by_hand():
    # row 0: rho = 1.5 (log 1.5 above old). A=+1: min(1.5, 1.2) = 1.2 -> loss -1.2
    #        rho = .5:                       A=+1: min(.5, .8) = .5  -> loss -.5
    # row 1: same ratios with A=-1: min(-1.5, -1.2) = -1.5 -> 1.5; min(-.5, -.8) = -.8 -> .8
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    old = torch.zeros(2, 2)
    loss = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5], [1.5, 0.8]]))


def test_clip_higher_widens_only_the_upper_bound():
    # eps_high = .28: rho = 1.5, A = +1 -> min(1.5, 1.28) = 1.28; rho = .5, A = -1 -> still .8
    logp = torch.log(torch.tensor([[1.5], [0.5]]))
    loss = clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28], [0.8]]))


def test_surrogate_gradient_at_ratio_one_is_the_policy_gradient():
    # At rho = 1 (on-policy), d(-rho*A)/d logp = -A per token.
    logp = torch.zeros(2, 3, requires_grad=True)
    clipped_surrogate(logp, torch.zeros(2, 3), torch.tensor([2.0, -1.0])).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0] * 3, [1.0] * 3]))


def test_ppo_clip_indicator_marks_only_active_clips():
    # tokens: rho 1.5 (A>0 -> clipped), .5 (A>0 -> not), rho 1.5 (A<0 -> not), .5 (A<0 -> clipped)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))
    out = POLICY_LOSSES["ppo"].fn(logp, torch.zeros(2, 2), torch.tensor([1.0, -1.0]), torch.ones(2, 2), ClipRange())
    assert out.indicators["clip_frac"].tolist() == [[True, False], [False, True]]


def test_policy_loss_registry_rejects_a_second_loss_under_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("ppo")(lambda *args: None)


@pytest.mark.parametrize("name, aggregation, allowed", [
    pytest.param("gspo", "token-mean", False, id="gspo-token-mean"),
    pytest.param("gspo", "seq-mean-token-sum-norm", False, id="gspo-token-sum"),
    pytest.param("gspo", "seq-mean-token-mean", True, id="gspo-seq-mean"),
    pytest.param("ppo", "token-mean", True, id="ppo-token-mean"),
])
def test_policy_losses_say_which_aggregations_they_need(name, aggregation, allowed):
    problem = check_policy_loss(name, aggregation)
    assert (problem is None) == allowed
    if not allowed:
        assert "seq-mean-token-mean" in problem


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
RAGGED = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    "mode, max_tokens, expected",
    [
        pytest.param("seq-mean-token-mean", None, (1.5 + 4.0) / 2, id="seq-mean"),  # row means 1.5 and 4
        pytest.param("token-mean", None, (1 + 2 + 4) / 3, id="token-mean"),  # 3 unmasked tokens
        pytest.param("seq-mean-token-sum-norm", 4, (1 + 2 + 4) / (2 * 4), id="dr-grpo"),  # B=2, max_tokens=4
    ],
)
def test_aggregate_loss_ragged_mask(mode, max_tokens, expected):
    assert aggregate_loss(PER_TOKEN, RAGGED, mode, max_tokens).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "mode, expected",
    [
        pytest.param("seq-mean-token-mean", 2.0, id="seq-mean"),  # only row 0 has tokens: (1+2+3)/3
        pytest.param("token-mean", 2.0, id="token-mean"),  # 6 / 3 tokens
        pytest.param("seq-mean-token-sum-norm", 1.0, id="dr-grpo"),  # 6 / (2 rows * 3)
    ],
)
def test_aggregate_loss_all_masked_row_contributes_nothing(mode, expected):
    loss = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, float("nan")]]).nan_to_num(9.0)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert aggregate_loss(loss, mask, mode, max_tokens=3).item() == pytest.approx(expected)


def test_aggregate_loss_everything_masked_is_zero_not_nan():
    for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"):
        out = aggregate_loss(PER_TOKEN, torch.zeros(2, 3), mode, max_tokens=3)
        assert out.item() == 0.0


def test_aggregate_loss_errors_name_the_fix():
    with pytest.raises(ValueError, match="valid: seq-mean-token-mean, token-mean"):
        aggregate_loss(PER_TOKEN, RAGGED, "sum")
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate_loss(PER_TOKEN, RAGGED, "seq-mean-token-sum-norm")


def test_total_loss_adds_beta_times_kl_and_skips_it_at_beta_zero():
    # rho = 1 everywhere, A = 1: surrogate -1. KL at d = log .5: .193147; beta .1 -> -1 + .0193147
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 1)
    for name in POLICY_LOSSES:  # at rho = 1 every registered loss is -A (CISPO's -A logp = -ln .5 x ... below)
        surrogate = -1.0 if name != "cispo" else math.log(2)  # CISPO: -sg(1) x A x logp = -ln(.5) = .693147
        with_kl = policy_loss_with_kl(name, logp, logp, ref, adv, mask, ClipRange(), beta=0.1).per_token
        torch.testing.assert_close(with_kl, torch.tensor([[surrogate + 0.1 * (math.log(2) - 0.5)]]))
        without = policy_loss_with_kl(name, logp, logp, None, adv, mask, ClipRange(), beta=0.0).per_token
        assert without.item() == pytest.approx(surrogate)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        policy_loss_with_kl("ppo", logp, logp, None, adv, mask, ClipRange(), beta=0.1)


def test_token_logprobs_by_hand():
    # logits 0, log 3 -> softmax .25, .75; picking token 1 gives log .75
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[1, 0]]), chunk_rows=1)
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.75), math.log(0.5)]]))


@pytest.mark.parametrize("mode, whole", [
    pytest.param("token-mean", 10 / 4, id="token-mean"),  # (1 + 2 + 3 + 4) / 4 tokens
    pytest.param("seq-mean-token-mean", (1.5 + 3 + 4) / 3, id="seq-mean-token-mean"),  # row means 1.5, 3, 4
    pytest.param("seq-mean-token-sum-norm", 10 / (3 * 2), id="dr-grpo"),  # token sum / (3 rows x max 2)
])
def test_micro_batch_shares_of_the_step_totals_sum_to_the_whole_loss(mode, whole):
    """Two micro-batches with 3 and 1 tokens: each divided by the step's totals (4 tokens, 3 sequences,
    3 rows), their shares add up to the loss of the whole batch; each averaged on its own (TRL's bnpo),
    token-mean would give (6/3 + 4/1) / 2 = 3.0, not 2.5."""
    first, first_mask = torch.tensor([[1.0, 2.0], [3.0, 9.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    second, second_mask = torch.tensor([[4.0, 9.0]]), torch.tensor([[1.0, 0.0]])
    counts = aggregation_counts(first_mask) + aggregation_counts(second_mask)
    assert counts.tolist() == [4.0, 3.0, 3.0]
    shares = aggregate_loss(first, first_mask, mode, 2, counts) + aggregate_loss(second, second_mask, mode, 2, counts)
    everything = aggregate_loss(torch.cat([first, second]), torch.cat([first_mask, second_mask]), mode, 2)
    assert shares.item() == pytest.approx(whole) and everything.item() == pytest.approx(whole)
    if mode == "token-mean":
        averaged = (aggregate_loss(first, first_mask, mode) + aggregate_loss(second, second_mask, mode)) / 2
        assert averaged.item() == pytest.approx(3.0)


def test_rollout_correction_weights_by_hand():
    """trainer - sampler on the two counted tokens: d = .5 and -1 (ratios e^.5 = 1.6487, e^-1 = .3679)."""
    from grpo.algorithm.loss import rollout_correction_weights, sampler_mismatch

    trainer, sampler = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.7]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # tis, cap 1.5: min(1.6487, 1.5), min(.3679, 1.5); the masked token 1
    torch.testing.assert_close(rollout_correction_weights(trainer, sampler, mask, "tis", 1.5),
                               torch.tensor([[1.5, math.exp(-1), 1.0]]))
    # mis: the sequence's ratio e^(.5 - 1) = .6065 on its tokens; above the cap (.5) the sequence is masked: 0
    torch.testing.assert_close(rollout_correction_weights(trainer, sampler, mask, "mis", 2.0),
                               torch.tensor([[math.exp(-0.5), math.exp(-0.5), 1.0]]))
    torch.testing.assert_close(rollout_correction_weights(trainer, sampler, mask, "mis", 0.5),
                               torch.tensor([[0.0, 0.0, 1.0]]))
    assert rollout_correction_weights(trainer, sampler, mask, "none", 2.0).eq(1).all()
    # k3 of KL(sampler || trainer) per token: e^d - d - 1 = .148721 and .367879; the ratio e^d
    kl, ratio = sampler_mismatch(trainer, sampler)
    torch.testing.assert_close(kl[0, :2], torch.tensor([math.exp(0.5) - 1.5, math.exp(-1.0)]))
    torch.testing.assert_close(ratio[0, :2], torch.tensor([math.exp(0.5), math.exp(-1.0)]))
