"""The policy update: log-prob passes, the GRPO loss per micro-batch, and the optimizer step.

A rollout step holds `prompts_per_step` prompts; a micro-batch is `batch_size / G` prompts
(all G completions of a prompt always stay together). Each micro-batch's loss is aggregated
on its own and divided by the number of micro-batches (as TRL and verl do with gradient
accumulation), then one optimizer step follows. `num_iterations` (mu) repeats this on the
same rollout; old log-probs are only computed when mu > 1 (with mu == 1 the ratio is
exactly 1 and old == current, detached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.loss import aggregate_loss, clip_fraction, grpo_per_token_loss, kl_k3
from grpo.rollout import RolloutBatch
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


class LocalOptimizerStep:
    """One process: gradients accumulate in .grad; then clip, step, advance the schedule, zero."""

    def __init__(self, optimizer, scheduler, params: list[torch.nn.Parameter], max_grad_norm: float):
        self.optimizer, self.scheduler, self.params, self.max_grad_norm = optimizer, scheduler, params, max_grad_norm

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        )
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm.item(), "lr": lr}


class DeepSpeedOptimizerStep:
    """ZeRO-3: each micro-batch's gradients are reduce-scattered as they are made; the engine
    averages them over ranks, clips (gradient_clipping) and steps on the gradient_accumulation_steps-th
    micro-batch. The schedule is the recipe's, advanced here as in the local step."""

    def __init__(self, engine, scheduler):
        self.engine, self.scheduler = engine, scheduler
        self.steps_taken = engine.global_steps

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already divided by the micro-batch count
        self.engine.step()  # a no-op until the accumulation boundary

    def step(self) -> dict:
        if self.engine.global_steps != self.steps_taken + 1:
            raise RuntimeError(f"DeepSpeed took {self.engine.global_steps - self.steps_taken} steps for one "
                               "rollout: this rank's micro-batches differ from gradient_accumulation_steps")
        self.steps_taken = self.engine.global_steps
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return {"grad_norm": float(self.engine.get_global_grad_norm()), "lr": lr}


@torch.no_grad()
def frozen_logprobs(score, batch: RolloutBatch, s: LossSettings) -> torch.Tensor:
    """Log-probs (B, T) under frozen weights: the reference (the caller disables the adapter, or
    passes the frozen copy's scorer) or the pre-update policy (old log-probs).

    score: a CompletionScorer, or the DeepSpeed engine wrapping one.
    """
    out = torch.zeros(batch.completion_ids.shape)
    for row, part in micro_batches(batch, s.prompts_per_micro_batch):
        logp = score(part, s.temperature, s.shared_prefix)
        out[row : row + logp.shape[0], : logp.shape[1]] = logp.float().cpu()
    return out


def policy_update(
    score,
    optimizer_step: LocalOptimizerStep | DeepSpeedOptimizerStep,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    loss_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    s: LossSettings,
    collect_stats: bool,
) -> dict:
    """One optimizer step over all micro-batches of the rollout; returns logging stats.

    score: a CompletionScorer, or the DeepSpeed engine wrapping one. advantages (B,); old_logp, ref_logp, loss_mask, token_weights (B, T) or None: the tokens
    that train (loss_mask) and per-token coefficients on their loss (token_weights).
    """
    device = next(score.parameters()).device
    parts = list(micro_batches(batch, s.prompts_per_micro_batch))
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0}
    token_count = 0.0
    for row, part in parts:
        rows = slice(row, row + part.completion_ids.shape[0])
        width = part.completion_ids.shape[1]
        mask = loss_mask[rows, :width].to(device)
        logp = score(part, s.temperature, s.shared_prefix)
        old = logp.detach() if old_logp is None else old_logp[rows, :width].to(device)
        ref = None if ref_logp is None else ref_logp[rows, :width].to(device)
        adv = advantages[rows].to(device)
        per_token = per_token_policy_loss(s, logp, old, ref, adv, mask)
        if token_weights is not None:
            per_token = per_token * token_weights[rows, :width].to(device)
        loss = aggregate_loss(per_token, mask, s.aggregation, s.max_tokens) / len(parts)
        optimizer_step.backward(loss)
        totals["loss"] += loss.item()
        if collect_stats:
            n = mask.sum().item()
            token_count += n
            with torch.no_grad():
                if ref is not None:
                    totals["kl"] += (kl_k3(logp, ref) * mask).sum().item()
                totals["clip_frac"] += clip_fraction(logp, old, adv, mask, s.eps_low, s.eps_high).item() * n
    stats = {"loss": totals["loss"], **optimizer_step.step()}
    if collect_stats:
        denom = max(token_count, 1.0)
        stats.update({k: totals[k] / denom for k in ("kl", "clip_frac")})
        if ref_logp is None:
            stats["kl"] = float("nan")
    return stats
