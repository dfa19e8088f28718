"""The policy update: log-prob passes, the GRPO loss per micro-batch, and the optimizer step.

A rollout step holds `prompts_per_step` prompts; a micro-batch is `batch_size / G` prompts
(all G completions of a prompt always stay together). Each micro-batch's loss is aggregated
on its own and divided by the number of micro-batches (as TRL and verl do with gradient
accumulation), then one optimizer step follows. `num_iterations` (mu) repeats this on the
same rollout; old log-probs are only computed when mu > 1 (with mu == 1 the ratio is
exactly 1 and old == current, detached).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grpo.loss import aggregate_loss, clip_fraction, grpo_per_token_loss, kl_k3
from grpo.rollout import RolloutBatch, completion_logprobs
from grpo.variants import dual_clip_surrogate, gspo_surrogate


@dataclass(frozen=True)
class LossSettings:
    beta: float
    eps_low: float
    eps_high: float
    aggregation: str
    max_tokens: int  # the completion cap, for Dr. GRPO's constant normalizer
    temperature: float
    prompts_per_micro_batch: int
    max_grad_norm: float
    shared_prefix: bool = True
    policy_loss: str = "ppo"  # ppo | dual_clip | gspo
    dual_clip_c: float = 3.0


def per_token_policy_loss(s: LossSettings, logp, old_logp, ref_logp, advantages, mask) -> torch.Tensor:
    """The selected surrogate plus beta * k3 KL, per token (B, T)."""
    if s.policy_loss == "ppo":
        return grpo_per_token_loss(logp, old_logp, ref_logp, advantages, s.beta, s.eps_low, s.eps_high)
    if s.policy_loss == "dual_clip":
        loss = dual_clip_surrogate(logp, old_logp, advantages, s.eps_low, s.eps_high, s.dual_clip_c)
    elif s.policy_loss == "gspo":
        loss = gspo_surrogate(logp, old_logp, advantages, mask, s.eps_low, s.eps_high)
    else:
        raise ValueError(f"unknown policy loss {s.policy_loss!r}; valid: ppo, dual_clip, gspo")
    return loss + s.beta * kl_k3(logp, ref_logp) if s.beta != 0 else loss


def micro_batches(batch: RolloutBatch, prompts_per_micro_batch: int):
    for start in range(0, batch.num_prompts, prompts_per_micro_batch):
        stop = min(start + prompts_per_micro_batch, batch.num_prompts)
        yield start * batch.group_size, batch.prompts_slice(start, stop)


@torch.no_grad()
def frozen_logprobs(model, batch: RolloutBatch, s: LossSettings, reference_model=None,
                    disable_adapter: bool = False) -> torch.Tensor:
    """Log-probs (B, T) under frozen weights: the reference (adapter disabled, or a separate
    copy for full fine-tuning) or the pre-update policy (old log-probs)."""
    out = torch.zeros(batch.completion_ids.shape)
    scorer = reference_model if reference_model is not None else model
    context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
    with context:
        for row, part in micro_batches(batch, s.prompts_per_micro_batch):
            logp = completion_logprobs(scorer, part, s.temperature, s.shared_prefix)
            out[row : row + logp.shape[0], : logp.shape[1]] = logp.float().cpu()
    return out


def policy_update(
    model,
    optimizer,
    scheduler,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    s: LossSettings,
    params: list[torch.nn.Parameter],
    collect_stats: bool,
) -> dict:
    """One optimizer step over all micro-batches of the rollout; returns logging stats.

    advantages (B,); old_logp, ref_logp, loss_mask, token_weights (B, T) or None: the tokens
    that train (loss_mask) and per-token coefficients on their loss (token_weights).
    """
    device = next(model.parameters()).device
    parts = list(micro_batches(batch, s.prompts_per_micro_batch))
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    token_count = 0.0
    for row, part in parts:
        rows = slice(row, row + part.completion_ids.shape[0])
        width = part.completion_ids.shape[1]
        mask = loss_mask[rows, :width].to(device)
        logp = completion_logprobs(model, part, s.temperature, s.shared_prefix)
        old = logp.detach() if old_logp is None else old_logp[rows, :width].to(device)
        ref = None if ref_logp is None else ref_logp[rows, :width].to(device)
        adv = advantages[rows].to(device)
        per_token = per_token_policy_loss(s, logp, old, ref, adv, mask)
        if token_weights is not None:
            per_token = per_token * token_weights[rows, :width].to(device)
        loss = aggregate_loss(per_token, mask, s.aggregation, s.max_tokens) / len(parts)
        loss.backward()
        totals["loss"] += loss.item()
        if collect_stats:
            n = mask.sum().item()
            token_count += n
            with torch.no_grad():
                if ref is not None:
                    totals["kl"] += (kl_k3(logp, ref) * mask).sum().item()
                totals["clip_frac"] += clip_fraction(logp, old, adv, mask, s.eps_low, s.eps_high).item() * n
    grad_norm = torch.nn.utils.clip_grad_norm_(
        params, s.max_grad_norm if s.max_grad_norm > 0 else float("inf")
    )
    lr = scheduler.get_last_lr()[0]  # the rate this step used
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    stats = {"loss": totals["loss"], "grad_norm": grad_norm.item(), "lr": lr}
    if collect_stats:
        denom = max(token_count, 1.0)
        stats.update({k: totals[k] / denom for k in ("kl", "clip_frac")})
        if ref_logp is None:
            stats["kl"] = float("nan")
    return stats
