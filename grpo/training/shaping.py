"""Recipe-selected shaping of rewards and of the per-token loss (grpo/algorithm/shaping.py, grpo/research).

Three seams of the loop: `shape_rewards` turns the (B, K) reward matrix into the rewards the
advantages come from, `advantages` normalizes them, `loss_mask_and_weights` says which tokens
train and how much. With the default VariantsConfig they reduce to plain GRPO: a weighted sum,
group-normalized, and the completion mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.algorithm.advantages import decoupled_advantages, group_advantages
from grpo.algorithm.shaping import high_entropy_token_mask, overlong_mask, soft_overlong_penalty, weighted_total
from grpo.research.label_free import within_group_rank
from grpo.research.reward_weighting import criterion_weights
from grpo.research.token_credit import discriminative_token_weights
from grpo.rollout.batch import RolloutBatch
from grpo.runtime.config import VariantsConfig


def completion_self_certainty(batch: RolloutBatch) -> torch.Tensor:
    """Mean per-token self-certainty of each completion, (B,)."""
    mask = batch.completion_mask
    return (batch.token_certainty * mask).sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class ShapedRewards:
    """The rewards the advantages come from: the recipe's columns plus the shaping terms as
    columns of their own (B, K'), their weights this step (K'), the weighted total (B,), and what
    to log. GRPO normalizes the total; GDPO normalizes each column (grpo/algorithm/advantages.py)."""

    columns: torch.Tensor
    weights: torch.Tensor
    total: torch.Tensor
    info: dict


def shape_rewards(matrix: torch.Tensor, base_weights: torch.Tensor, batch: RolloutBatch,
                  v: VariantsConfig, max_new_tokens: int) -> ShapedRewards:
    """Per-reward scores (B, K, NaN = not applicable) with the recipe's shaping terms added as columns."""
    g = batch.group_size
    dynamic = v.reward_weighting == "dynamic"
    weights = criterion_weights(matrix, base_weights, g, dynamic, v.reward_weighting_floor)  # (K,)
    columns, info = [matrix], {}
    extra_weights = []
    if dynamic:
        info.update({f"reward_weight/{k}": w.item() for k, w in enumerate(weights)})
    if v.overlong == "soft":
        penalty = soft_overlong_penalty(batch.completion_mask.sum(1), max_new_tokens, v.overlong_cache_len)
        columns.append(penalty.unsqueeze(1))
        extra_weights.append(1.0)
        info["reward/overlong_penalty/mean"] = penalty.mean().item()
    if v.self_certainty_weight > 0:
        rank = within_group_rank(completion_self_certainty(batch), g)
        columns.append(rank.unsqueeze(1))
        extra_weights.append(v.self_certainty_weight)
        info["reward/self_certainty_rank/mean"] = (v.self_certainty_weight * rank).mean().item()
    all_columns = torch.cat([c.to(matrix.dtype) for c in columns], dim=1)  # (B, K')
    all_weights = torch.cat([weights.to(matrix.dtype), torch.tensor(extra_weights, dtype=matrix.dtype)])
    return ShapedRewards(all_columns, all_weights, weighted_total(all_columns, all_weights), info)


def advantages(shaped: ShapedRewards, group_size: int, v: VariantsConfig, scale: str) -> torch.Tensor:
    """(B,) advantages: GRPO's group-normalized total (train.advantage_scale), or GDPO's
    reward-decoupled normalization (variants.reward_normalization=gdpo)."""
    if v.reward_normalization == "gdpo":
        return decoupled_advantages(shaped.columns, shaped.weights, group_size)
    return group_advantages(shaped.total, group_size, scale)


def loss_mask_and_weights(batch: RolloutBatch, total: torch.Tensor, v: VariantsConfig
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which tokens enter the policy loss (B, T) and their coefficients (B, T) or None (all 1)."""
    mask = batch.completion_mask
    if v.overlong == "mask":
        mask = overlong_mask(mask, batch.truncated)
    if v.entropy_top_fraction < 1:
        mask = high_entropy_token_mask(batch.token_entropy, mask, v.entropy_top_fraction)
    weights = None
    if v.token_credit == "proxy":
        weights = discriminative_token_weights(batch.completion_ids, mask, total, batch.group_size,
                                               v.token_credit_min, v.token_credit_max)
    return mask.float(), weights
