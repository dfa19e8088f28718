"""Dynamic reward reweighting across criteria, after POW3R (policy-aware rubric rewards, arXiv:2605.20164).

When K reward criteria (format, correctness, length, ...) are summed with fixed weights, the ones
the policy always meets (saturated) or never meets (unreachable) add nothing a group can learn
from, and a nearly saturated one that fails once in a while hands that one completion a large
negative advantage out of proportion to what the batch is trying to learn. POW3R's remedy: keep
the human weights as the objective but scale each criterion by how much it currently separates
the completions of a group ("rollout-level contrast"). We measure that contrast as the mean
within-group standard deviation of the criterion; the POW3R paper's exact estimator is not
followed. The result feeds the usual group advantage unchanged.

Convention: reward_matrix is (B, K) with B = prompts x G, each run of G rows one group; NaN marks
"criterion not applicable to this row" (the trainer turns a reward function's None into NaN).
"""

import torch

from grpo.algorithm.groups import group_view


def _check_matrix(reward_matrix: torch.Tensor, group_size: int) -> None:
    assert reward_matrix.dim() == 2, f"reward_matrix must be (B, K), got {tuple(reward_matrix.shape)}"
    group_view(reward_matrix, group_size)


def criterion_spread(reward_matrix: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean within-group standard deviation of each criterion.

    reward_matrix: (B, K), NaN = not applicable. Returns (K,) >= 0, never NaN.
    For each group and criterion, the population std (divide by n, not n - 1: a group {0, 1}
    has spread 0.5) over the group's non-NaN entries; groups with fewer than two non-NaN entries
    cannot show contrast and are left out of that criterion's mean; no such group at all -> 0.
    """
    _check_matrix(reward_matrix, group_size)
    grouped = group_view(reward_matrix.double(), group_size)  # (P, G, K)
    valid = ~torch.isnan(grouped)  # (P, G, K)
    values = torch.where(valid, grouped, torch.zeros_like(grouped))  # (P, G, K)
    n = valid.sum(dim=1)  # (P, K)
    mean = values.sum(dim=1) / n.clamp(min=1)  # (P, K)
    var = (torch.where(valid, values - mean.unsqueeze(1), torch.zeros_like(values)) ** 2).sum(dim=1) / n.clamp(min=1)
    counted = n >= 2  # (P, K)
    std_sum = (var.sqrt() * counted).sum(dim=0)  # (K,)
    return (std_sum / counted.sum(dim=0).clamp(min=1)).to(reward_matrix.dtype)


def separation_weights(
    reward_matrix: torch.Tensor, group_size: int, floor: float = 0.0, eps: float = 1e-6
) -> torch.Tensor:
    """How much each criterion currently separates completions within groups, as shares summing to 1.

    reward_matrix: (B, K), NaN = not applicable. Returns (K,) >= 0 summing to 1:
        share_k = spread_k / sum_j spread_j      (spread from `criterion_spread`; spread <= eps -> 0)
        share_k = max(share_k, floor), then renormalized to sum 1.
    A criterion with zero spread in every group (saturated, unreachable, or never applicable)
    gets share 0, or about `floor` so it can come back into play when the policy changes. If no
    criterion separates anything, every advantage is zero whatever the weights, and the shares
    are uniform (1/K) so the combined reward equals the static one.
    """
    _check_matrix(reward_matrix, group_size)
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"separation floor must be in [0, 1), got {floor}; 0 silences criteria without spread")
    num_criteria = reward_matrix.shape[1]
    spread = criterion_spread(reward_matrix, group_size)  # (K,)
    spread = torch.where(spread > eps, spread, torch.zeros_like(spread))
    if spread.sum() == 0:
        return torch.full((num_criteria,), 1.0 / num_criteria, dtype=reward_matrix.dtype)
    share = torch.clamp(spread / spread.sum(), min=floor)  # (K,)
    return share / share.sum()


def criterion_weights(
    reward_matrix: torch.Tensor,
    base_weights: torch.Tensor,
    group_size: int,
    dynamic: bool,
    floor: float = 0.0,
) -> torch.Tensor:
    """The weight each criterion gets this batch; log it next to the reward.

    reward_matrix: (B, K); base_weights: (K,) the human weights from the recipe.
    Returns (K,). Static: base_weights. Dynamic: w_k = base_k * share_k (`separation_weights`),
    rescaled so sum(w) = sum(base): the human weights stay the prior (a criterion weighted 0 stays
    0) and the combined reward keeps the static reward's overall scale, so learning rates and
    logged rewards stay comparable with dynamic weighting on or off. Dynamic mode needs
    non-negative base weights; if every separating criterion has base weight 0, falls back to base.
    """
    _check_matrix(reward_matrix, group_size)
    assert base_weights.shape == reward_matrix.shape[1:], (
        f"base_weights must be (K,)={reward_matrix.shape[1]}, got {tuple(base_weights.shape)}"
    )
    base = base_weights.to(reward_matrix.dtype)
    if not dynamic:
        return base.clone()
    if (base < 0).any():
        raise ValueError(
            f"dynamic reward weighting needs non-negative base weights, got {base.tolist()}; "
            "express a penalty as a criterion with values <= 0 and a positive weight"
        )
    raw = base * separation_weights(reward_matrix, group_size, floor=floor)  # (K,)
    if raw.sum() == 0:
        return base.clone()
    return raw * (base.sum() / raw.sum())
