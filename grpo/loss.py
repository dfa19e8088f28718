"""The GRPO math: pure functions on tensors, no config objects, no I/O.

Shapes: B = prompts x group size (each run of `group_size` consecutive rows is one
prompt's group), T = completion tokens (right-padded), V = vocabulary size.

Choices the reference implementations disagree on, pinned here:
- Advantage std is Bessel-corrected (unbiased), as in DeepSeekMath's GRPO and TRL;
  epsilon 1e-4 is added to the std (TRL), not inside a sqrt.
- A group whose rewards are all equal gets exactly 0 advantage (it carries no signal),
  never 0/0.
- KL to the reference uses the k3 estimator exp(r) - r - 1 with r = ref - logp
  (Schulman, "Approximating KL divergence"; DeepSeekMath eq. 4): unbiased, always >= 0.
- Aggregation modes follow verl's names: "seq-mean-token-mean" (GRPO paper, TRL's
  "grpo"), "token-mean" (DAPO, TRL's "bnpo"), "seq-mean-token-sum-norm" (Dr. GRPO).
"""

from __future__ import annotations

import torch

ADVANTAGE_SCALES = ("group", "batch", "none")


def _check_groups(rewards: torch.Tensor, group_size: int) -> int:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not divisible by group_size {group_size}: "
            "each prompt needs exactly group_size completions"
        )
    return rewards.numel() // group_size


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (DeepSeekMath GRPO, outcome supervision).

    rewards: (B,) float, B = num_prompts * group_size. Returns (B,).
    scale="group": (r - mean_g) / (std_g + eps); "batch": (r - mean_g) / (std_batch + eps);
    "none": r - mean_g (Dr. GRPO drops the std to remove the difficulty bias).
    """
    num_groups = _check_groups(rewards, group_size)
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(ADVANTAGE_SCALES)}")
    grouped = rewards.float().view(num_groups, group_size)  # (G_n, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (G_n, G)
    if scale == "group":
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (rewards.float().std() + eps)
    # All-equal groups: force an exact 0 so float rounding in the mean leaks no signal.
    flat = (grouped.max(dim=1).values == grouped.min(dim=1).values).unsqueeze(1)
    return torch.where(flat, torch.zeros_like(centered), centered).view(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1, d = ref - logp. (B, T)."""
    assert logp.shape == ref_logp.shape, (logp.shape, ref_logp.shape)
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """PPO clipped objective as a per-token loss: -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A).

    logp, old_logp: (B, T); advantages: (B,), broadcast over tokens. Returns (B, T).
    eps_high > eps_low is DAPO's clip-higher.
    """
    assert logp.shape == old_logp.shape and logp.dim() == 2, (logp.shape, old_logp.shape)
    assert advantages.shape == (logp.shape[0],), (advantages.shape, logp.shape)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped)


def clip_fraction(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """Share of unmasked tokens whose gradient the clip removes (ratio outside the trust region
    on the side the advantage pushes towards). Scalar, for logging."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))
    mask = mask.float()
    return (clipped.float() * mask).sum() / mask.sum().clamp(min=1)


def _masked_token_sum(per_token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_token_loss * mask).sum(dim=1)  # (B,)


def _seq_mean_token_mean(per_token_loss, mask, max_tokens):
    tokens_per_row = mask.sum(dim=1)  # (B,)
    row_mean = _masked_token_sum(per_token_loss, mask) / tokens_per_row.clamp(min=1)
    # An all-masked row has no tokens: it is left out of the mean over sequences.
    has_tokens = (tokens_per_row > 0).float()
    return (row_mean * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def _token_mean(per_token_loss, mask, max_tokens):
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1)


def _seq_mean_token_sum_norm(per_token_loss, mask, max_tokens):
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(
            "aggregation 'seq-mean-token-sum-norm' needs max_tokens (the max completion length), "
            f"got {max_tokens!r}"
        )
    return (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_tokens)


AGGREGATIONS = {
    "seq-mean-token-mean": _seq_mean_token_mean,
    "token-mean": _token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate_loss(
    per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str, max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the unmasked tokens (mask (B, T), 1 = counts)."""
    assert per_token_loss.shape == mask.shape and mask.dim() == 2, (per_token_loss.shape, mask.shape)
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[mode](per_token_loss, mask.to(per_token_loss.dtype), max_tokens)


def grpo_per_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    beta: float,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """clipped_surrogate + beta * kl_k3, per token (B, T). The KL term is skipped when beta == 0."""
    loss = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if beta != 0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs (ref_logp is None)")
        loss = loss + beta * kl_k3(logp, ref_logp)
    return loss


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[tokens] without materializing a (B, T, V) float32 log-softmax.

    logits: (B, T, V) any float dtype; tokens: (B, T) int. Returns (B, T) float32.
    logsumexp runs over `chunk_rows` rows at a time, so peak extra memory is (chunk, T, V).
    """
    assert logits.shape[:2] == tokens.shape, (logits.shape, tokens.shape)
    picked = torch.gather(logits, 2, tokens.unsqueeze(-1)).squeeze(-1).float()  # (B, T)
    norms = torch.cat(
        [torch.logsumexp(chunk.float(), dim=-1) for chunk in logits.split(chunk_rows, dim=0)]
    )  # (B, T)
    return picked - norms
