"""Discriminative token credit, after the DelTA idea (Zhang, Wu, Lin 2026, arXiv:2605.21467).

Plain GRPO gives every token of a completion the same advantage, so the tokens every completion
shares (formatting, boilerplate, "The answer is") get pushed up in the good completions and down
in the bad ones, a tug-of-war that dilutes the few tokens that actually made the difference.
DelTA reweights tokens so that the update favours what distinguishes high- from low-reward
completions. DelTA measures that on token-gradient vectors; we use a cheap proxy that needs only
the sampled token ids: how differently often a token id occurs on the two sides of a group.
The weights multiply the per-token policy loss before aggregation; they carry no gradient.
"""

import torch

from grpo.algorithm.groups import group_view, has_spread


def discriminative_token_weights(
    token_ids: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    min_weight: float = 0.1,
    max_weight: float = 2.0,
) -> torch.Tensor:
    """Per-token coefficients on the policy loss that favour tokens separating good from bad.

    token_ids: (B, T) sampled completion token ids; mask: (B, T) 1 where the token counts;
    rewards: (B,) with B = prompts x group_size, each run of group_size rows one group.
    Returns (B, T) float32, 0 at masked positions. Within each group:
      1. sides: high = rows with reward > group mean, low = rows with reward < group mean
         (rows at the mean are on neither side; they have zero advantage anyway);
      2. p_high(v) = occurrences of id v among the unmasked tokens of the high rows / number of
         those tokens (pooled over rows, so it is a frequency per token); p_low likewise;
      3. discriminativeness d(v) = |p_high(v) - p_low(v)| / (p_high(v) + p_low(v)) in [0, 1]:
         0 for a token as frequent on both sides (formatting), 1 for a token found on one side
         only; d = 0 for a token seen on neither side (no evidence);
      4. raw weight u = min_weight + (max_weight - min_weight) * d(token id);
      5. weights = u * n / sum(u) over the group's n unmasked tokens, so their mean is 1 and the
         loss keeps its scale: min/max_weight fix only the ratio (20x by default) between the
         least and the most discriminative token.
    A group whose rewards are all equal carries no contrast: its unmasked tokens get weight 1.
    """
    assert token_ids.dim() == 2, f"token_ids must be (B, T), got {tuple(token_ids.shape)}"
    assert mask.shape == token_ids.shape, f"mask {tuple(mask.shape)} != token_ids {tuple(token_ids.shape)}"
    assert rewards.shape == token_ids.shape[:1], (
        f"rewards must be (B,)={token_ids.shape[0]}, got {tuple(rewards.shape)}"
    )
    if not 0.0 < min_weight <= max_weight:
        raise ValueError(f"token credit needs 0 < min_weight <= max_weight, got {min_weight} and {max_weight}")
    grouped = group_view(rewards, group_size)  # (P, G)
    (batch, length), num_groups = token_ids.shape, grouped.shape[0]
    valid = mask.bool()  # (B, T)
    out = valid.to(torch.float32)  # (B, T), weight 1 on every counted token until reweighted
    if not valid.any():
        return out

    group_of_row = torch.arange(batch, device=rewards.device) // group_size  # (B,)
    row_mean = grouped.mean(dim=1)[group_of_row]  # (B,)
    high = valid & (rewards > row_mean).unsqueeze(-1)  # (B, T)
    low = valid & (rewards < row_mean).unsqueeze(-1)  # (B, T)

    # Count ids per group in a compact vocabulary (ids present in the batch) so that memory is
    # (groups x distinct ids), not (groups x model vocabulary).
    distinct, compact = torch.unique(token_ids[valid], return_inverse=True)  # (U,), (n_valid,)
    num_ids = distinct.numel()
    key = torch.zeros_like(token_ids)  # (B, T); masked positions point at id 0, never used
    key[valid] = compact
    key = key + group_of_row.unsqueeze(-1) * num_ids  # (B, T) index into (P * U)

    def side_frequency(side: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(key[side], minlength=num_groups * num_ids).view(num_groups, num_ids).double()
        return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # (P, U)

    p_high, p_low = side_frequency(high), side_frequency(low)  # (P, U)
    total = p_high + p_low
    discriminative = torch.where(total > 0, (p_high - p_low).abs() / total.clamp(min=1e-30), torch.zeros_like(total))
    raw = (min_weight + (max_weight - min_weight) * discriminative).view(-1)[key]  # (B, T)
    raw = torch.where(valid, raw, torch.zeros_like(raw))

    group_sum = raw.view(num_groups, group_size * length).sum(dim=1)  # (P,)
    group_count = valid.view(num_groups, group_size * length).sum(dim=1)  # (P,)
    scale = group_count / group_sum.clamp(min=1e-30)  # (P,); raw >= min_weight > 0 where counted
    weights = (raw * scale[group_of_row].unsqueeze(-1)).to(torch.float32)  # (B, T)
    spread = has_spread(rewards, group_size)[group_of_row].unsqueeze(-1)  # (B, 1)
    return torch.where(spread, weights, out)
