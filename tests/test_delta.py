import math

import pytest
import torch

from grpo.research.delta import (
    delta_token_weights,
    gradient_features,
    margin_scale,
    side_margin,
    weighted_centroid,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# The "shared vs specific" micro-batch used below: one group of 4 (A = [1, 1, -1, -1]), T = 2, H = 2.
# Every row starts with the shared token s = (1, 0) (formatting); the positive rows then hold the
# specific token p = (0, 1), the negative rows n = (0, -1).
S, P, N = [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]
SHARED_FEATURES = torch.tensor([[S, P], [S, P], [S, N], [S, N]], dtype=torch.float64)  # (4, 2, 2)
SHARED_ADVANTAGES = torch.tensor([1.0, 1.0, -1.0, -1.0])


@pytest.mark.parametrize(
    "hidden, logp, expected",
    [
        # p = 0.5 -> (1 - 0.5) * (1, 2) = (0.5, 1.0);  p = 0.25 -> 0.75 * (3, -1) = (2.25, -0.75)
        pytest.param([[[1.0, 2.0], [3.0, -1.0]]], [[math.log(0.5), math.log(0.25)]],
                     [[[0.5, 1.0], [2.25, -0.75]]], id="residual-times-hidden"),
        # a certain token (p = 1, log p = 0) has no gradient on its output row: v = 0
        pytest.param([[[4.0, -4.0]]], [[0.0]], [[[0.0, 0.0]]], id="certain-token-is-zero"),
        # a very unlikely token (p ~ 0) keeps its hidden state: v = h
        pytest.param([[[2.0, 3.0]]], [[-1e4]], [[[2.0, 3.0]]], id="unlikely-token-is-h"),
    ],
)
def test_gradient_features_formula(hidden, logp, expected):
    v = gradient_features(torch.tensor(hidden), torch.tensor(logp))
    torch.testing.assert_close(v, torch.tensor(expected))


def test_weighted_centroid_and_empty_side():
    # v = (1, 0), (0, 1), (2, 2), (4, 0) with weights 0.5, 1.5, 0, 2: sum w = 4,
    # sum w v = (0.5 + 8, 1.5) = (8.5, 1.5) -> centroid (2.125, 0.375)
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [4.0, 0.0]]])
    w = torch.tensor([[0.5, 1.5], [0.0, 2.0]])
    torch.testing.assert_close(weighted_centroid(v, w), torch.tensor([2.125, 0.375]))
    # no token on the side: 0 / EPS = the zero vector, not NaN
    assert torch.equal(weighted_centroid(v, torch.zeros(2, 2)), torch.zeros(2))


def test_advantage_weighted_centroids_margins_and_scale():
    # G = 4, A = [2, 1, -1, -3], T = 2, H = 2; row 1's second token is padding (features 100).
    # mu_pos = (2 (1,0) + 2 (0,1) + 1 (3,3)) / (2 + 2 + 1) = (5, 5) / 5 = (1, 1)
    # mu_neg = (1 (1,1) + 1 (-1,1) + 3 (0,2) + 3 (2,0)) / (1 + 1 + 3 + 3) = (6, 8) / 8 = (0.75, 1)
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 3.0], [100.0, 100.0]],
                      [[1.0, 1.0], [-1.0, 1.0]], [[0.0, 2.0], [2.0, 0.0]]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]]).bool()
    adv = torch.tensor([2.0, 1.0, -1.0, -3.0])
    base_pos = adv.clamp(min=0).unsqueeze(-1) * mask
    base_neg = (-adv).clamp(min=0).unsqueeze(-1) * mask
    mu_pos, mu_neg = weighted_centroid(v, base_pos), weighted_centroid(v, base_neg)
    torch.testing.assert_close(mu_pos, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(mu_neg, torch.tensor([0.75, 1.0]))
    # margin m = |v - mu_neg|^2 - |v - mu_pos|^2 = 2 v . (0.25, 0) + (0.5625 + 1) - 2 = 0.5 v_x - 0.4375
    margin = side_margin(v, mu_pos, mu_neg)
    torch.testing.assert_close(margin[0], torch.tensor([0.0625, -0.4375]))  # v_x = 1, 0
    torch.testing.assert_close(margin[2], torch.tensor([0.0625, -0.9375]))  # v_x = 1, -1
    # positive-side scale: population std of {0.0625, -0.4375, 1.0625} (rows 0 and 1, padding out):
    # mean 0.229167, E[m^2] = (0.00390625 + 0.19140625 + 1.12890625) / 3 = 0.44140625
    # var = 0.44140625 - 0.0525174 = 0.3888889 -> std 0.6236096
    pos = mask & (adv > 0).unsqueeze(-1)
    torch.testing.assert_close(margin_scale(margin, pos), torch.tensor(0.6236096), atol=1e-6, rtol=1e-6)
    # one token (or none) has variance 0, floored at EPS = 1e-8: scale 1e-4
    torch.testing.assert_close(margin_scale(margin, torch.zeros_like(pos)), torch.tensor(1e-4))


@pytest.mark.parametrize(
    "refine_steps, shared, specific",
    [
        # Plain centroids: mu_pos = mean{s, p, s, p} = (0.5, 0.5), mu_neg = (0.5, -0.5).
        # m = 2 v . (0, 1) + (0.5 - 0.5) = 2 v_y: s -> 0, p -> 2; negative side -m: s -> 0, n -> 2.
        # gamma = std{0, 2, 0, 2} = 1 on both sides. K = 0: scores sigmoid(0) = 0.5,
        # sigmoid(2) = 1 / (1 + e^-2) = 1 / 1.135335 = 0.880797.
        # u: s = 0.8 + 0.4 * 0.5 = 1.0, p = n = 0.8 + 0.4 * 0.880797 = 1.152319
        # mean u = 1.076159 -> w: s = 1 / 1.076159 = 0.929230, p = 1.152319 / 1.076159 = 1.070770
        pytest.param(0, 0.929230, 1.070770, id="K=0-no-refinement"),
        # K = 1 (paper default): refined positive centroid with weights 0.5 (s) and 0.880797 (p):
        # mu_pos* = (0.5 (1, 0) + 0.880797 (0, 1)) / 1.380797 = (0.362110, 0.637890), mu_neg* mirrored.
        # m* = 2 v . (0, 1.275781) + 0 = 2.551561 v_y: s -> 0, p -> 2.551561.
        # gamma lags one step: still std of the plain margins = 1. sigmoid(2.551561) = 0.927678.
        # u: s = 1.0, p = 0.8 + 0.4 * 0.927678 = 1.171071; mean 1.085536
        # w: s = 1 / 1.085536 = 0.921204, p = 1.171071 / 1.085536 = 1.078796
        pytest.param(1, 0.921204, 1.078796, id="K=1-paper-default"),
    ],
)
def test_shared_token_weighs_less_than_side_specific(refine_steps, shared, specific):
    w = delta_token_weights(SHARED_FEATURES, torch.ones(4, 2), SHARED_ADVANTAGES, 4, refine_steps=refine_steps)
    expected = torch.tensor([[shared, specific]] * 4)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-6)
    assert (w[:, 0] < w[:, 1]).all()


def test_masked_positions_are_zero_and_their_features_ignored():
    # The shared/specific batch plus a third position, masked in every row, whose features are NaN;
    # row 3's specific token is masked too. Masked positions get 0, the rest stay finite, and the
    # result is the same as with finite garbage there, or with the padding column cut off.
    features = torch.cat([SHARED_FEATURES, torch.full((4, 1, 2), float("nan"), dtype=torch.float64)], dim=1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]])
    w = delta_token_weights(features, mask, SHARED_ADVANTAGES, 4)
    assert torch.isfinite(w).all()
    assert torch.equal(w[mask == 0], torch.zeros(5))
    torch.testing.assert_close(w, delta_token_weights(features.nan_to_num(123.0), mask, SHARED_ADVANTAGES, 4))
    torch.testing.assert_close(w[:, :2], delta_token_weights(SHARED_FEATURES, mask[:, :2], SHARED_ADVANTAGES, 4))


def test_all_zero_advantages_give_one_on_every_counted_token():
    # Centroids 0 / EPS = 0, margins 0, scales 1e-4; every row has A = 0 -> u = lam_min = 0.8,
    # normalized by N / sum u = 1 / 0.8 -> exactly 1; masked positions (a ragged row, an empty row) 0.
    features = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    w = delta_token_weights(features, mask, torch.zeros(4), 2)
    torch.testing.assert_close(w, mask.float())


def test_flat_group_in_a_mixed_micro_batch_and_normalization_is_per_micro_batch():
    # Two groups of 2, T = 1, H = 2. Group A: A = [1, -1], v = (1, 0), (-1, 0).
    # Group B: rewards all equal, A = [0, 0], features (5, 5), (0, 3) (in no centroid).
    # mu_pos = (1, 0), mu_neg = (-1, 0): m = 2 v . (2, 0) + (1 - 1) = 4 v_x -> row 0: 4, row 1: -4.
    # Each side has one token: std 0, variance floored at 1e-8 -> gamma = 1e-4;
    # row 0: sigmoid(4 / 1e-4) = 1, row 1: sigmoid(-(-4) / 1e-4) = 1 -> u = 1.2, 1.2; refinement
    # keeps the centroids (one token per side). Group B: u = lam_min = 0.8, 0.8.
    # sum u = 4.0 over N = 4 tokens -> scale 1: w = [1.2, 1.2, 0.8, 0.8].
    # Pooled over the micro-batch, not per group: group A's mean weight is 1.2, group B's 0.8.
    features = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]], [[5.0, 5.0]], [[0.0, 3.0]]])
    w = delta_token_weights(features, torch.ones(4, 1), torch.tensor([1.0, -1.0, 0.0, 0.0]), 2)
    torch.testing.assert_close(w, torch.tensor([[1.2], [1.2], [0.8], [0.8]]))


def test_self_normalized_to_mean_one_over_the_micro_batch_tokens():
    # Sum of w over the unmasked tokens = their count (mean 1), so a token-mean of w * A * ratio
    # equals the self-normalized surrogate sum(w A ratio) / sum(w).
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(6, 5, 4, generator=gen)
    mask = torch.ones(6, 5)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    adv = torch.tensor([1.2, -0.4, -0.8, 0.0, 0.0, 0.0])  # group 2 (rows 3-5) flat
    w = delta_token_weights(features, mask, adv, 3)
    assert w.sum().item() == pytest.approx(mask.sum().item(), rel=1e-6)
    assert ((w >= 0) & (w <= 1.2 / 0.8 + 1e-6)).all()  # u in [0.8, 1.2], normalization <= 1.2 / 0.8
    loss = torch.randn(6, 5, generator=gen)
    token_mean = (w * loss * mask).sum() / mask.sum()
    torch.testing.assert_close(token_mean, (w * loss * mask).sum() / (w * mask).sum())


def test_equal_range_is_plain_grpo():
    w = delta_token_weights(SHARED_FEATURES, torch.ones(4, 2), SHARED_ADVANTAGES, 4, lam_min=1.0, lam_max=1.0)
    torch.testing.assert_close(w, torch.ones(4, 2))


def _random_batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    mask = (torch.rand(6, 4, generator=gen) > 0.2).long()
    mask[:, 0] = 1
    adv = torch.tensor([1.0, -0.5, -0.5, 0.7, -1.4, 0.7])  # two groups of 3, both with spread
    return features, mask, adv


_ROTATION = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64))[0]


@pytest.mark.parametrize(
    "transform",
    [
        # every v scaled by c: centroids by c, margins and their std by c^2, so sigmoid(m / gamma) is unchanged
        pytest.param(lambda f, a: (3.7 * f, a), id="scale-features"),
        # centroids are weighted means (weights sum to 1), so they move with v and the margins do not change
        pytest.param(lambda f, a: (f + torch.tensor([5.0, -2.0, 1.0], dtype=f.dtype), a), id="translate-features"),
        pytest.param(lambda f, a: (f @ _ROTATION, a), id="rotate-features"),
        # advantages scaled by c > 0: same sides, same weighted means
        pytest.param(lambda f, a: (f, 5.0 * a), id="scale-advantages"),
    ],
)
def test_invariances(transform):
    features, mask, adv = _random_batch(2)
    expected = delta_token_weights(features, mask, adv, 3)
    f2, a2 = transform(features, adv)
    torch.testing.assert_close(delta_token_weights(f2, mask, a2, 3), expected, atol=1e-5, rtol=1e-5)


def test_reordering_groups_reorders_weights():
    features, mask, adv = _random_batch(3)
    order = torch.tensor([3, 4, 5, 0, 1, 2])  # swap the two groups
    w = delta_token_weights(features, mask, adv, 3)
    torch.testing.assert_close(delta_token_weights(features[order], mask[order], adv[order], 3), w[order])


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_device_dtype_no_grad_and_inputs_untouched(device, dtype):
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(4, 3, 8, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    logits = torch.randn(4, 3, 5, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    token_logp = logits.log_softmax(-1)[..., 0]  # (4, 3), carries grad
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], device=device)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], device=device, requires_grad=True)
    before = hidden.detach().clone(), mask.clone(), adv.detach().clone()

    v = gradient_features(hidden, token_logp)
    assert v.dtype == torch.float32 and v.device == hidden.device and not v.requires_grad
    w = delta_token_weights(v, mask, adv, 2)
    assert w.shape == (4, 3) and w.dtype == torch.float32 and w.device == hidden.device
    assert not w.requires_grad and w.grad_fn is None
    assert torch.isfinite(w).all() and torch.equal(w[mask == 0].cpu(), torch.zeros(3))
    torch.testing.assert_close(w.sum(), mask.sum().float())
    assert torch.equal(hidden.detach(), before[0]) and torch.equal(mask, before[1])
    assert torch.equal(adv.detach(), before[2])


def test_bad_arguments_are_rejected_with_the_fix():
    args = (SHARED_FEATURES, torch.ones(4, 2), SHARED_ADVANTAGES)
    with pytest.raises(ValueError, match="lam_min <= lam_max"):
        delta_token_weights(*args, 4, lam_min=0.0)
    with pytest.raises(ValueError, match="lam_min <= lam_max"):
        delta_token_weights(*args, 4, lam_min=1.3, lam_max=1.2)
    with pytest.raises(ValueError, match="refine_steps"):
        delta_token_weights(*args, 4, refine_steps=-1)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        delta_token_weights(*args, 3)
    with pytest.raises(AssertionError, match="advantages must be"):
        delta_token_weights(SHARED_FEATURES, torch.ones(4, 2), torch.ones(4, 1), 4)
    with pytest.raises(AssertionError, match="mask"):
        delta_token_weights(SHARED_FEATURES, torch.ones(4, 3), SHARED_ADVANTAGES, 4)
    with pytest.raises(AssertionError, match="token_logp"):
        gradient_features(torch.ones(2, 3, 4), torch.zeros(2, 4))
