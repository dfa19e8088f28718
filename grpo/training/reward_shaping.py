"""Stage 3 of a step: rewards -> advantages, and which tokens train (grpo/algorithm, grpo/research).

`reward_columns` and `shape_rewards` turn the (B, K) reward matrix into the rewards the advantages
come from (the recipe's `reward_shaping` section), `advantages` runs the recipe's estimator (`advantage`),
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
    lengths: torch.Tensor  # (B,) each completion's tokens (REINFORCE++'s token-weighted statistics)
    info: dict


def reward_columns(matrix: torch.Tensor, batch: RolloutBatch, v: RewardShapingConfig,
                   max_new_tokens: int) -> torch.Tensor:
    """Each row's reward columns (B, K'): the recipe's rewards (B, K, NaN = not applicable), then the
    shaping terms the recipe adds (DAPO's soft overlong penalty, the self-certainty rank in the group).
    Row-wise or group-wise only: rows of several ranks can be stacked and shaped together."""
    g, columns = batch.group_size, [matrix]
    if v.overlong_penalty:
        columns.append(soft_overlong_penalty(batch.completion_mask.sum(1), max_new_tokens,
                                             v.overlong_cache_len).unsqueeze(1))
    if v.self_certainty_weight > 0:
        columns.append(within_group_rank(completion_self_certainty(batch), g).unsqueeze(1))
    return torch.cat([c.to(matrix.dtype) for c in columns], dim=1)


def shape_rewards(columns: torch.Tensor, lengths: torch.Tensor, base_weights: torch.Tensor, group_size: int,
                  v: RewardShapingConfig) -> ShapedRewards:
    """The batch's weights and totals from its reward columns (B, K') (`reward_columns`) and completion
    lengths (B,); base_weights (K,): the recipe's, for its K rewards. POW3R's dynamic weights are a
    statistic of the whole batch: pass the rows of every rank (the step's), so they are one process's."""
    k = base_weights.shape[0]
    matrix = columns[:, :k]
    dynamic = v.weighting == "dynamic"
    weights = criterion_weights(matrix, base_weights, group_size, dynamic, v.weighting_floor)  # (K,)
    extra, info, column = [], {}, k
    if dynamic:
        info.update({f"reward_weight/{i}": w.item() for i, w in enumerate(weights)})
    if v.overlong_penalty:
        extra.append(1.0)
        info["reward/overlong_penalty/mean"] = columns[:, column].mean().item()
        column += 1
    if v.self_certainty_weight > 0:
        extra.append(v.self_certainty_weight)
        info["reward/self_certainty_rank/mean"] = (v.self_certainty_weight * columns[:, column]).mean().item()
    all_weights = torch.cat([weights.to(columns.dtype), torch.tensor(extra, dtype=columns.dtype)])
    return ShapedRewards(columns, all_weights, weighted_total(columns, all_weights), lengths, info)


def advantages(shaped: ShapedRewards, group_size: int, a: AdvantageConfig) -> torch.Tensor:
    """(B,) advantages by the recipe's estimator (grpo/algorithm/advantages.py ADVANTAGE_ESTIMATORS). Batch
    statistics (GDPO's, advantage.scale=batch) are over the rows given: the step's, over every rank."""
    return estimate_advantages(a.estimator, shaped.columns, shaped.weights, shaped.total, shaped.lengths, group_size,
                               a.scale)


def loss_mask(batch: RolloutBatch, tokens: TokensConfig) -> torch.Tensor:
    """Which tokens enter the loss (B, T) float: the tokens the model sampled (an agent's tool results are not
    among them), less DAPO's truncated completions (tokens.overlong_mask) and the low-entropy tokens
    (tokens.entropy_top_fraction < 1)."""
    mask = batch.completion_mask if batch.sampled_mask is None else batch.completion_mask * batch.sampled_mask
    if tokens.overlong_mask:
        mask = overlong_mask(mask, batch.truncated)
    if tokens.entropy_top_fraction < 1:
        mask = high_entropy_token_mask(batch.token_entropy, mask, tokens.entropy_top_fraction)
    return mask.float()
