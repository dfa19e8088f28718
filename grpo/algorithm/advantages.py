"""Group-relative advantages (DeepSeekMath GRPO, outcome supervision).

Pinned here, where the reference implementations disagree:
- the std is Bessel-corrected (unbiased), as in DeepSeekMath's GRPO and TRL;
- epsilon 1e-4 is added to the std (TRL), not inside a sqrt;
- a group whose rewards are all equal gets exactly 0 advantage (it carries no signal), never 0/0.
"""

from __future__ import annotations

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
