"""Group-relative advantages (DeepSeekMath GRPO, outcome supervision).

Pinned here, where the reference implementations disagree:
- the std is Bessel-corrected (unbiased), as in DeepSeekMath's GRPO and TRL;
- epsilon 1e-4 is added to the std (TRL), not inside a sqrt;
- a group whose rewards are all equal gets exactly 0 advantage (it carries no signal), never 0/0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo.algorithm.groups import group_view, has_spread

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """rewards: (B,) float, B = num_prompts * group_size. Returns (B,).

    scale="group": (r - mean_g) / (std_g + eps); "batch": (r - mean_g) / (std_batch + eps);
    "none": r - mean_g (Dr. GRPO drops the std to remove the difficulty bias).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(ADVANTAGE_SCALES)}")
    grouped = group_view(rewards.float(), group_size, min_size=2)  # (P, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale == "group":
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (rewards.float().std() + eps)
    # All-equal groups: force an exact 0 so float rounding in the mean leaks no signal.
    flat = ~has_spread(rewards, group_size).unsqueeze(1)  # (P, 1)
    return torch.where(flat, torch.zeros_like(centered), centered).view(-1)


def decoupled_advantages(scores: torch.Tensor, weights: torch.Tensor, group_size: int,
                         eps: float = 1e-4) -> torch.Tensor:
    """GDPO's advantages (Liu et al. 2026, "Group reward-Decoupled Normalization Policy
    Optimization", arXiv:2601.05242): each reward normalized within its group on its own, the
    weighted sum of those, then normalized over the batch.

    scores: (B, K), NaN = the reward does not apply to that row; weights: (K,). Returns (B,):
        n_ik = (r_ik - mean_g(r_k)) / (std_g(r_k) + eps)   over the group's rows where r_k applies
        s_i  = sum_k w_k * n_ik
        A_i  = (s_i - mean(s)) / (std(s) + eps)             over the batch's rows
    Why: summed first (GRPO), different reward combinations collapse to the same advantage (a
    {format, no answer} and a {no format, answer} completion tie); normalized apart, each reward keeps
    its own resolution, and the batch step keeps the scale from growing with the number of rewards.
    Pinned as in `group_advantages`: Bessel-corrected stds, eps added to the std; n_ik = 0 where r_k
    does not apply or where the group's applicable values of r_k are all equal (or fewer than two);
    a group with no spread in s gets exactly 0.
    """
    assert scores.dim() == 2 and weights.shape == (scores.shape[1],), (scores.shape, weights.shape)
    grouped = group_view(scores.float(), group_size, min_size=2)  # (P, G, K)
    applies = ~torch.isnan(grouped)  # (P, G, K)
    values = torch.where(applies, grouped, torch.zeros_like(grouped))
    count = applies.sum(dim=1, keepdim=True)  # (P, 1, K)
    mean = values.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(applies, values - mean, torch.zeros_like(values))  # (P, G, K)
    std = ((centered**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    spread = (std > 0) & (count >= 2)  # (P, 1, K)
    normalized = torch.where(spread & applies, centered / (std + eps), torch.zeros_like(centered))
    summed = (normalized * weights.to(normalized.dtype)).sum(dim=2).reshape(-1)  # (B,)
    out = (summed - summed.mean()) / (summed.std() + eps) if summed.numel() > 1 else torch.zeros_like(summed)
    flat = ~has_spread(summed, group_size).repeat_interleave(group_size)  # (B,)
    return torch.where(flat, torch.zeros_like(out), out)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740; as verl's `rloo`): each completion's
    reward minus the mean of the other G - 1 of its group, A_i = G / (G - 1) * (r_i - mean_g). (B,) -> (B,).
    No std: the baseline is unbiased for the policy gradient. A group whose rewards are all equal gets 0."""
    grouped = group_view(rewards.float(), group_size, min_size=2)  # (P, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    flat = ~has_spread(rewards, group_size).unsqueeze(1)  # (P, 1)
    return torch.where(flat, torch.zeros_like(centered), centered * group_size / (group_size - 1)).view(-1)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, lengths: torch.Tensor, group_size: int,
                                     eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al. 2025, arXiv:2501.03262; as verl's `reinforce_plus_plus_baseline`):
    the group mean subtracted, then the batch whitened over its tokens. (B,), lengths (B,) -> (B,).

        a_i = r_i - mean_g(r);   A_i = (a_i - mu) / sqrt(var + eps)
        mu = sum_i n_i a_i / N,  var = sum_i n_i (a_i - mu)^2 / (N - 1),  N = sum_i n_i tokens

    Every token of a completion carries a_i, so the batch statistics weigh each completion by its length
    n_i (verl's masked_whiten over the response tokens, Bessel-corrected). As in verl, a group with no
    reward spread has a_i = 0 but A_i = -mu / sigma, not 0: the whitening shifts every completion.
    """
    grouped = group_view(rewards.float(), group_size, min_size=2)  # (P, G)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)  # (B,)
    n = lengths.to(centered.dtype)
    tokens = n.sum()
    if tokens < 2:
        return torch.zeros_like(centered)
    mu = (n * centered).sum() / tokens
    var = (n * (centered - mu) ** 2).sum() / (tokens - 1)
    return (centered - mu) * torch.rsqrt(var + eps)


# ---- the estimators a recipe picks by name (advantage.estimator) ---------------------------------
# Each takes the shaped reward columns (B, K) (NaN = not applicable), their weights (K,), the weighted
# total (B,), each completion's length in tokens (B,), the group size and advantage.scale, and returns
# one advantage per completion (B,). Batch statistics are over the rows given: the step's, every rank's.

AdvantageFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, str], torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage_estimator(name: str):
    """Decorator: make `fn(columns, weights, total, lengths, group_size, scale) -> (B,)` selectable as `name`."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def estimate_advantages(name: str, columns: torch.Tensor, weights: torch.Tensor, total: torch.Tensor,
                        lengths: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """The registered estimator `name` on a batch's rewards: (B,) advantages."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](columns, weights, total, lengths, group_size, scale)


@register_advantage_estimator("grpo")
def _grpo(columns, weights, total, lengths, group_size, scale):
    return group_advantages(total, group_size, scale)


@register_advantage_estimator("gdpo")
def _gdpo(columns, weights, total, lengths, group_size, scale):
    return decoupled_advantages(columns, weights, group_size)


@register_advantage_estimator("rloo")
def _rloo(columns, weights, total, lengths, group_size, scale):
    return leave_one_out_advantages(total, group_size)


@register_advantage_estimator("reinforce_pp")
def _reinforce_pp(columns, weights, total, lengths, group_size, scale):
    return reinforce_pp_baseline_advantages(total, lengths, group_size)
