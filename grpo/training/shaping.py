"""Recipe-selected shaping of rewards and of the per-token loss (grpo/algorithm/shaping.py, grpo/research).

Two seams of the loop: `shape_rewards` turns the (B, K) reward matrix into the (B,) totals the
advantages are computed from; `loss_mask_and_weights` says which tokens train and how much.
With the default VariantsConfig both reduce to plain GRPO: a weighted sum and the completion mask.
"""

from __future__ import annotations

import torch

from grpo.algorithm.shaping import high_entropy_token_mask, overlong_mask, soft_overlong_penalty
from grpo.research.label_free import within_group_rank
from grpo.research.reward_weighting import combine_rewards, criterion_weights
from grpo.research.token_credit import discriminative_token_weights
from grpo.rollout.batch import RolloutBatch
from grpo.runtime.config import VariantsConfig


def completion_self_certainty(batch: RolloutBatch) -> torch.Tensor:
    """Mean per-token self-certainty of each completion, (B,)."""
    mask = batch.completion_mask
    return (batch.token_certainty * mask).sum(1) / mask.sum(1).clamp(min=1)


def shape_rewards(matrix: torch.Tensor, base_weights: torch.Tensor, batch: RolloutBatch,
                  v: VariantsConfig, max_new_tokens: int) -> tuple[torch.Tensor, dict]:
    """Totals (B,) from per-reward scores (B, K, NaN = not applicable), plus what to log."""
    g = batch.group_size
    dynamic = v.reward_weighting == "dynamic"
    total = combine_rewards(matrix, base_weights, g, dynamic, v.reward_weighting_floor)  # (B,)
    info = {}
    if dynamic:
        used = criterion_weights(matrix, base_weights, g, True, v.reward_weighting_floor)
        info.update({f"reward_weight/{k}": w.item() for k, w in enumerate(used)})
    if v.overlong == "soft":
        penalty = soft_overlong_penalty(batch.completion_mask.sum(1), max_new_tokens, v.overlong_cache_len)
        total = total + penalty
        info["reward/overlong_penalty/mean"] = penalty.mean().item()
    if v.self_certainty_weight > 0:
        bonus = v.self_certainty_weight * within_group_rank(completion_self_certainty(batch), g)
        total = total + bonus
        info["reward/self_certainty_rank/mean"] = bonus.mean().item()
    return total, info


def loss_mask_and_weights(batch: RolloutBatch, total: torch.Tensor, v: VariantsConfig
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which tokens enter the policy loss (B, T) and their coefficients (B, T) or None (all 1)."""
    mask = batch.completion_mask
    if v.overlong == "mask":
        mask = overlong_mask(mask, batch.truncated)
    if v.entropy_top_fraction < 1:
        mask = high_entropy_token_mask(batch.token_entropy, mask, v.entropy_top_fraction)
    weights = None
    if v.token_credit:
        weights = discriminative_token_weights(batch.completion_ids, mask, total, batch.group_size,
                                               v.token_credit_min, v.token_credit_max)
    return mask.float(), weights
