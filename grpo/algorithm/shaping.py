"""Shaping of rewards and of which tokens train, as pure tensor functions.

Conventions as in `grpo/algorithm/loss.py`: B = prompts x G completions, each run of G consecutive
rows one group; `mask` is a (B, T) float or bool tensor, 1 where a completion token counts.

- `weighted_total`: per-reward scores to one reward per completion (NaN = not applicable).
- `overlong_mask`, `soft_overlong_penalty`: DAPO's two ways to handle truncated completions.
- `high_entropy_token_mask`: train on the forking tokens only (entropies come from the rollout).
"""

import math

import torch


def weighted_total(matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, K) scores x (K,) weights -> (B,) totals; a not-applicable (NaN) score adds nothing
    (the other weights are not renormalized, so a row with every score NaN totals 0)."""
    assert matrix.dim() == 2 and weights.shape == (matrix.shape[1],), (matrix.shape, weights.shape)
    contributions = matrix * weights.to(matrix.dtype)  # (B, K)
    return torch.where(torch.isnan(matrix), torch.zeros_like(contributions), contributions).sum(dim=1)


def overlong_mask(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO overlong filtering (Yu et al. 2025, arXiv:2503.14476): drop truncated completions.

    mask: (B, T); truncated: (B,) bool, True where generation hit the token limit before EOS.
    Returns a new (B, T) mask of mask's dtype with truncated rows zeroed. Why: a cut-off answer
    is scored as wrong although its reasoning may be fine; training on it punishes length, not
    error. Aggregate with "token-mean" or skip fully-masked rows, so a zero row adds nothing.
    """
    assert mask.dim() == 2, f"mask must be (B, T), got {tuple(mask.shape)}"
    assert truncated.shape == mask.shape[:1], f"truncated must be (B,)={mask.shape[0]}, got {tuple(truncated.shape)}"
    keep = (~truncated.bool()).unsqueeze(-1)  # (B, 1)
    return mask * keep.to(mask.dtype) if mask.dtype != torch.bool else mask & keep


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO soft overlong punishment, eq. 13 of arXiv:2503.14476. Added to the task reward.

    lengths: (B,) completion lengths in tokens. Returns (B,) float:
        0                                  if L <= max_len - cache_len
        ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len (0 to -1)
        -1                                 if L > max_len
    e.g. max_len=100, cache_len=20: L=80 -> 0, L=90 -> -0.5, L=100 -> -1, L=130 -> -1.
    """
    assert lengths.dim() == 1, f"lengths must be (B,), got {tuple(lengths.shape)}"
    if not 0 < cache_len <= max_len:
        raise ValueError(
            f"soft overlong penalty needs 0 < cache_len <= max_len, got cache_len={cache_len}, "
            f"max_len={max_len}; set cache_len to the width of the penalty ramp (DAPO uses 4096 of 20480)"
        )
    over = lengths.to(torch.float32) - (max_len - cache_len)  # (B,)
    return -(over / cache_len).clamp(min=0.0, max=1.0)


def high_entropy_token_mask(entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Keep only the highest-entropy tokens ("Beyond the 80/20 rule", Wang et al. 2025, arXiv:2506.01939).

    entropy, mask: (B, T). Among the n unmasked tokens of the whole batch, keeps the
    k = ceil(top_fraction * n) with the highest entropy (the paper keeps the top 20%: the "forking"
    tokens where the model chooses a path). Ties are broken by position in the flattened batch,
    earlier first, so the choice is deterministic. Returns a new (B, T) mask of mask's dtype that
    is a subset of `mask`; rows may end up empty. top_fraction=1 returns the mask unchanged.
    """
    assert entropy.dim() == 2 and entropy.shape == mask.shape, (
        f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} must both be (B, T)"
    )
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}; the paper uses 0.2")
    valid = mask.bool().flatten()  # (B*T,)
    # The 1e-9 keeps float noise from adding a token: 0.7 * 10 is 7.000000000000001 in floats.
    k = math.ceil(top_fraction * int(valid.sum()) - 1e-9)
    scores = entropy.detach().flatten().float().masked_fill(~valid, float("-inf"))  # (B*T,)
    order = torch.sort(scores, descending=True, stable=True).indices  # stable: ties keep position order
    keep = torch.zeros_like(valid)
    keep[order[:k]] = True
    keep = keep.view(mask.shape)  # (B, T)
    return keep if mask.dtype == torch.bool else keep.to(mask.dtype)
