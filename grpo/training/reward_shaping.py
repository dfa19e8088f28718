"""Stage 3 of a step: rewards -> advantages, and which tokens train (grpo/algorithm, grpo/research).

`shape_rewards` turns the (B, K) reward matrix into the rewards the advantages come from (the
recipe's `reward_shaping` section), `advantages` runs the recipe's estimator (`advantage`),
`loss_mask` says which tokens train (`tokens`). With the defaults they reduce to plain GRPO: a
weighted sum, group-normalized, and the completion mask. Token credit (how much each token
trains) acts inside the update, with the objective (grpo/objectives/token_credit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.algorithm.advantages import estimate_advantages
from grpo.algorithm.shaping import high_entropy_token_mask, overlong_mask, soft_overlong_penalty, weighted_total
from grpo.research.label_free import within_group_rank
from grpo.research.reward_weighting import criterion_weights
from grpo.rollout.batch import RolloutBatch
from grpo.runtime.config import AdvantageConfig, RewardShapingConfig, TokensConfig


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
                  v: RewardShapingConfig, max_new_tokens: int) -> ShapedRewards:
    """Per-reward values (B, K, NaN = not applicable) with the recipe's shaping terms added as columns."""
    g = batch.group_size
    dynamic = v.weighting == "dynamic"
    weights = criterion_weights(matrix, base_weights, g, dynamic, v.weighting_floor)  # (K,)
    columns, info = [matrix], {}
    extra_weights = []
    if dynamic:
        info.update({f"reward_weight/{k}": w.item() for k, w in enumerate(weights)})
    if v.overlong_penalty:
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


def advantages(shaped: ShapedRewards, group_size: int, a: AdvantageConfig) -> torch.Tensor:
    """(B,) advantages by the recipe's estimator (grpo/algorithm/advantages.py ADVANTAGE_ESTIMATORS)."""
    return estimate_advantages(a.estimator, shaped.columns, shaped.weights, shaped.total, group_size, a.scale)


def loss_mask(batch: RolloutBatch, tokens: TokensConfig) -> torch.Tensor:
    """Which tokens enter the loss (B, T) float: the completion mask, less DAPO's truncated completions
    (tokens.overlong_mask) and the low-entropy tokens (tokens.entropy_top_fraction < 1)."""
    mask = batch.completion_mask
    if tokens.overlong_mask:
        mask = overlong_mask(mask, batch.truncated)
    if tokens.entropy_top_fraction < 1:
        mask = high_entropy_token_mask(batch.token_entropy, mask, tokens.entropy_top_fraction)
    return mask.float()
