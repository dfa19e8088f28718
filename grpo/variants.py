"""Loss and sampling variants that users of TRL and verl expect, as pure tensor functions.

Conventions mirror `grpo/loss.py`: B = prompts x G completions, each run of G consecutive rows
is one group; `mask` is a (B, T) float or bool tensor, 1 where a completion token counts; every
per-token loss is returned unaggregated, as (B, T), for `aggregate_loss` to reduce.

What lives here:
- `dual_clip_surrogate`: PPO clip (with clip-higher) plus dual-clip for negative advantages.
- `gspo_surrogate`: GSPO's sequence-level ratio, in its token form with the right gradient.
- `overlong_mask`, `soft_overlong_penalty`: DAPO's two ways to handle truncated completions.
- `high_entropy_token_mask`: train on the forking tokens only (entropies come from the rollout).
- `groups_with_signal`: DAPO dynamic-sampling filter (the refill loop belongs to the trainer).
"""

import math

import torch

from grpo.loss import clipped_surrogate


def _check_logp_pair(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor) -> None:
    assert logp.dim() == 2, f"logp must be (B, T), got {tuple(logp.shape)}"
    assert old_logp.shape == logp.shape, f"old_logp {tuple(old_logp.shape)} != logp {tuple(logp.shape)}"
    assert advantages.shape == logp.shape[:1], f"advantages must be (B,)={logp.shape[0]}, got {tuple(advantages.shape)}"


def dual_clip_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float = 3.0,
) -> torch.Tensor:
    """Per-token dual-clip PPO loss (Ye et al. 2020, arXiv:1912.09729), as verl's `vanilla` loss.

    logp, old_logp: (B, T) token log-probs under the current and the sampling policy.
    advantages: (B,), broadcast over the tokens of each completion.
    Returns (B, T): with rho = exp(logp - old_logp),
        clipped = max(-rho*A, -clip(rho, 1 - eps_low, 1 + eps_high)*A)   (PPO; eps_high > eps_low
                                                                          is DAPO's clip-higher)
        loss    = min(clipped, -clip_ratio_c*A)   where A < 0,   clipped otherwise.
    Why: for A < 0 the PPO term -rho*A grows without bound as rho grows (a token the old policy
    found unlikely but the new one likes), so one stale token can dominate the batch; dual-clip
    caps that loss at -c*A (zero gradient beyond rho = c). Requires clip_ratio_c > 1, as in verl.
    """
    _check_logp_pair(logp, old_logp, advantages)
    assert clip_ratio_c > 1.0, f"clip_ratio_c must be > 1 for dual-clip, got {clip_ratio_c}"
    adv = advantages.unsqueeze(-1)  # (B, 1)
    ppo_loss = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)  # (B, T)
    capped = torch.minimum(ppo_loss, -clip_ratio_c * adv)  # (B, T)
    return torch.where(adv < 0, capped, ppo_loss)


def gspo_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> torch.Tensor:
    """Per-token GSPO loss (Zheng et al. 2025, arXiv:2507.18071), the "GSPO-token" form, as verl.

    logp, old_logp, mask: (B, T); advantages: (B,).
    The sequence ratio is the length-normalized (geometric-mean) likelihood ratio
        s_i = exp( sum_t mask*(logp - old_logp) / max(sum_t mask, 1) ).
    Each token carries s_i,t = sg[s_i] * exp(logp_t - sg[logp_t]): its value is s_i, so every token
    of a completion is clipped together, and its gradient is s_i * grad(logp_t), so averaging the
    returned (B, T) loss over each completion's tokens then over completions
    ("seq-mean-token-mean", the caller's job) gives exactly GSPO's sequence gradient.
    Returns (B, T): -min(s*A, clip(s, 1 - eps_low, 1 + eps_high)*A). Masked positions carry the
    same value and must be dropped by the aggregation. The log-ratio is clamped at 10 before exp,
    as in verl, so a wild sequence cannot overflow. GSPO's clip range is tiny (3e-4/4e-4 in the
    paper) because a sequence ratio moves far less than a token ratio.
    """
    _check_logp_pair(logp, old_logp, advantages)
    assert mask.shape == logp.shape, f"mask {tuple(mask.shape)} != logp {tuple(logp.shape)}"
    m = mask.to(logp.dtype)
    lengths = m.sum(dim=-1).clamp(min=1.0)  # (B,)
    seq_log_ratio = ((logp - old_logp) * m).sum(dim=-1) / lengths  # (B,)
    token_log_ratio = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)  # (B, T), value = seq ratio
    ratio = torch.exp(torch.clamp(token_log_ratio, max=10.0))  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    return torch.maximum(-ratio * adv, -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


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


def groups_with_signal(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic-sampling filter (arXiv:2503.14476 sec. 3.2): which groups can teach anything.

    rewards: (B,) with B = prompts x group_size. Returns (B // group_size,) bool, True where the
    group's rewards are not all equal. A group where every completion scores the same has zero
    advantage for every completion, so it only dilutes the batch; the trainer drops such groups
    and draws more prompts until the batch is full (with a bounded number of tries).
    """
    assert rewards.dim() == 1, f"rewards must be (B,), got {tuple(rewards.shape)}"
    assert group_size >= 1 and rewards.shape[0] % group_size == 0, (
        f"B={rewards.shape[0]} is not a multiple of group_size={group_size}"
    )
    grouped = rewards.view(-1, group_size)  # (P, G)
    return grouped.amax(dim=-1) != grouped.amin(dim=-1)
