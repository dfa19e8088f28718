"""DelTA token coefficients as the paper defines them (Zhang, Wu, Lin 2026, arXiv:2605.21467).

DelTA's reading of a sequence-level RLVR step: the update is a linear discriminator over
token-gradient vectors v, built from a positive and a negative centroid (advantage-weighted means
of the v of the tokens on each side). Tokens shared by both sides (formatting, boilerplate) pull
both centroids toward the same background and dilute the directions that separate good from bad
completions. DelTA scores each token by how clearly it sits on its own side of that
discriminator and turns the score into a coefficient in [lam_min, lam_max] on its advantage; the
coefficients are self-normalized so that the surrogate keeps its scale.

What follows the paper (appendices F, G, H), whose formulas are those of the authors' released
implementation (github.com/RUCBM/DelTA, verl-DelTA/verl/workers/actor/dp_actor.py,
`compute_log_prob_h`, run with recipe/dapo/srcs/run_DelTA.sh: K=1, lam_min=0.8, lam_max=1.2):
- the token-gradient proxy v = (1 - p_t) h_t (`gradient_features`);
- Euclidean distances to the centroids (the released code builds a diagonal variance metric, then
  overwrites it with the identity before use; the identity is followed), soft assignment by a sigmoid of
  the distance margin divided by the margin's standard deviation on that side;
- K refinement steps of the centroids with the soft scores, the coefficient map, the zero-advantage
  rule and the self-normalization, as written in `delta_token_weights`.
What differs, forced by our loop: the authors pool one data-parallel rank's whole share of the
rollout batch (computed once before the PPO mini-batches); `delta_token_weights` pools whatever
micro-batch it is given (whole groups), so centroids, scales and the normalization are per
micro-batch. The paper pools across groups (never per group), and so does this.

The coefficients multiply the advantage in the paper's surrogate (A_t -> w_t A_t), not a KL term.
"""

from __future__ import annotations

import torch

from grpo.algorithm.groups import group_view

EPS = 1e-8  # the authors' floor on a centroid's total weight, a side's margin variance, the weight sum


def gradient_features(hidden: torch.Tensor, token_logp: torch.Tensor) -> torch.Tensor:
    """The last-layer token-gradient proxy v_t = (1 - p_t) h_t (paper appendix F), (B, T, H).

    hidden: (B, T, H) the final (normed) hidden state that feeds the LM head, at each position
    that predicts a completion token; token_logp: (B, T) the sampled token's log-prob at the
    sampling temperature, p_t = exp(token_logp). With logits z = W h, the gradient of log p_y
    with respect to W is (e_y - p) h^T; the proxy keeps its row y, the gradient with respect to
    the sampled token's output embedding, (1 - p_y) h. Followed here as in the authors' code: p at
    the sampling temperature, and no 1/temperature factor (at temperature tau the exact row is
    (1 - p_y) h / tau; a common factor on every v leaves `delta_token_weights` unchanged).
    Decided here: the inputs are detached and the result is at least float32 (bf16 hidden states
    are upcast), so no gradient flows through the coefficients built from it.
    """
    assert hidden.dim() == 3, f"hidden must be (B, T, H), got {tuple(hidden.shape)}"
    assert token_logp.shape == hidden.shape[:2], (
        f"token_logp must be (B, T)={tuple(hidden.shape[:2])}, got {tuple(token_logp.shape)}"
    )
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    residual = 1.0 - token_logp.detach().to(dtype).exp()  # (B, T) output-softmax residual of the sampled token
    return residual.unsqueeze(-1) * hidden.detach().to(dtype)  # (B, T, H)


def weighted_centroid(features: torch.Tensor, token_weight: torch.Tensor) -> torch.Tensor:
    """sum_t w_t v_t / sum_t w_t over all (B, T) positions, (H,); the zero vector when sum w = 0.

    features: (B, T, H); token_weight: (B, T), >= 0 (0 at tokens outside the side).
    The denominator is floored at EPS as in the authors' code, so an empty side gives 0, not NaN.
    """
    total = token_weight.sum()
    return torch.einsum("bt,bth->h", token_weight, features) / total.clamp(min=EPS)


def side_margin(features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """m_t = |v_t - mu_neg|^2 - |v_t - mu_pos|^2, (B, T): > 0 where v_t is nearer the positive centroid.

    The negative side's margin is -m_t. Computed in its linear form
    m_t = 2 v_t . (mu_pos - mu_neg) + |mu_neg|^2 - |mu_pos|^2, the discriminator of the paper's
    discriminator view, which also avoids a (B, T, H) difference tensor per centroid.
    """
    direction = 2.0 * (positive - negative)  # (H,)
    offset = negative.square().sum() - positive.square().sum()  # ()
    return features @ direction + offset  # (B, T)


def margin_scale(margin: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """The temperature of the soft assignment: the standard deviation of `margin` over the side's
    tokens, (). Unweighted, population (divide by n, not n - 1), the variance floored at EPS
    (so a side with one token, or none, gets sqrt(EPS) = 1e-4, not 0), as the authors' code.

    margin: (B, T); side: (B, T) bool, the unmasked tokens of that side's rows.
    """
    count = side.sum().clamp(min=1)
    inside = torch.where(side, margin, torch.zeros_like(margin))
    mean = inside.sum() / count
    variance = inside.square().sum() / count - mean.square()
    return variance.clamp(min=EPS).sqrt()


def delta_token_weights(
    features: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    group_size: int,
    lam_min: float = 0.8,
    lam_max: float = 1.2,
    refine_steps: int = 1,
) -> torch.Tensor:
    """DelTA's per-token coefficients on the advantage, (B, T) float32, 0 at masked positions.

    features: (B, T, H) token-gradient vectors (`gradient_features`); mask: (B, T), nonzero where a
    token counts; advantages: (B,) with B = prompts x group_size, each run of group_size rows one
    prompt's group. lam_min, lam_max: the coefficient range (paper/code lambda_min = 0.8,
    lambda_max = 1.2); refine_steps: the paper's K centroid refinements (default 1).
    Sides: positive = unmasked tokens of rows with A > 0, negative = those of rows with A < 0.
      1. centroids mu_pos = sum A_i v_t / sum A_i over the positive tokens, mu_neg likewise with
         |A_i| over the negative ones (pooled over every group of the micro-batch);
      2. margins m_t = |v_t - mu_neg|^2 - |v_t - mu_pos|^2 (the negative side uses -m_t), and the
         scales gamma_pos, gamma_neg = std of each side's margins over its tokens (`margin_scale`);
      3. K times: soft scores s_t = sigmoid(m_t / gamma) for the current centroids, centroids
         re-estimated with weights s_t |A_i|, and gamma re-measured on the margins just used.
         As in the authors' code the scale lags one step behind the centroids: the final scores
         divide the margins of the refined centroids by the std of the margins before the last
         refinement (with K = 1: the std under the plain advantage-weighted centroids);
      4. u_t = lam_min + (lam_max - lam_min) * sigmoid(m_t / gamma_side) on each side's tokens,
         u_t = lam_min on the tokens of zero-advantage rows (their A is 0, so u only counts in 5);
      5. self-normalization over the micro-batch: w_t = u_t * N / sum u over its N unmasked tokens
         (zero-advantage rows included), so mean w = 1 and a token-mean of w_t A_t ratio_t is the
         paper's self-normalized surrogate sum w A ratio / sum w. Not per group, as the paper.
    A micro-batch whose advantages are all 0 gets exactly 1 on every unmasked token (centroids 0,
    margins 0, scale 1e-4: no NaN). Features at masked positions are ignored, even NaN.
    Weights are invariant to scaling the features or the advantages by c > 0, to translating
    or rotating the features (when both sides have tokens), and equivariant to reordering rows.
    Decided here: inputs are detached and moved to the features' device; arithmetic runs in
    float32 (float64 stays float64) and the result is float32.
    """
    assert features.dim() == 3, f"features must be (B, T, H), got {tuple(features.shape)}"
    assert mask.shape == features.shape[:2], f"mask {tuple(mask.shape)} != features (B, T) {tuple(features.shape[:2])}"
    assert advantages.shape == features.shape[:1], (
        f"advantages must be (B,)=({features.shape[0]},), got {tuple(advantages.shape)}"
    )
    group_view(advantages, group_size)  # raises unless the micro-batch holds whole groups
    if not 0.0 < lam_min <= lam_max:
        raise ValueError(f"DelTA needs 0 < lam_min <= lam_max, got lam_min={lam_min}, lam_max={lam_max} "
                         "(the paper uses 0.8 and 1.2; lam_min = lam_max is plain GRPO)")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps (the paper's K) must be an int >= 0, got {refine_steps!r} (the paper uses 1)")

    device, dtype = features.device, torch.promote_types(features.dtype, torch.float32)
    valid = mask.detach().to(device) != 0  # (B, T)
    v = torch.where(valid.unsqueeze(-1), features.detach().to(dtype), torch.zeros((), device=device, dtype=dtype))
    adv = advantages.detach().to(device=device, dtype=dtype)  # (B,)
    pos_rows, neg_rows = adv > 0, adv < 0  # (B,)
    pos, neg = valid & pos_rows.unsqueeze(-1), valid & neg_rows.unsqueeze(-1)  # (B, T) the two sides
    base_pos = adv.clamp(min=0).unsqueeze(-1) * pos  # (B, T) A_i on positive tokens, else 0
    base_neg = (-adv).clamp(min=0).unsqueeze(-1) * neg  # (B, T) |A_i| on negative tokens, else 0

    mu_pos, mu_neg = weighted_centroid(v, base_pos), weighted_centroid(v, base_neg)  # (H,), (H,)
    margin = side_margin(v, mu_pos, mu_neg)  # (B, T)
    scale_pos, scale_neg = margin_scale(margin, pos), margin_scale(-margin, neg)  # (), ()
    for _ in range(refine_steps):
        soft_pos = torch.sigmoid(margin / scale_pos) * base_pos  # (B, T)
        soft_neg = torch.sigmoid(-margin / scale_neg) * base_neg  # (B, T)
        scale_pos, scale_neg = margin_scale(margin, pos), margin_scale(-margin, neg)  # the lag of step 3
        mu_pos, mu_neg = weighted_centroid(v, soft_pos), weighted_centroid(v, soft_neg)
        margin = side_margin(v, mu_pos, mu_neg)

    score = torch.where(pos_rows.unsqueeze(-1), torch.sigmoid(margin / scale_pos),
                        torch.where(neg_rows.unsqueeze(-1), torch.sigmoid(-margin / scale_neg),
                                    torch.zeros_like(margin)))  # (B, T) 0 on zero-advantage rows
    raw = (lam_min + (lam_max - lam_min) * score) * valid  # (B, T)
    scale = valid.sum() / raw.sum().clamp(min=EPS)  # (); raw >= lam_min > 0 on counted tokens
    return (raw * scale).to(torch.float32)
