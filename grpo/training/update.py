"""The policy update: log-prob passes over micro-batches, the loss per micro-batch, one optimizer step.

A rollout step holds `prompts_per_step` prompts; a micro-batch is `batch_size / G` prompts
(all G completions of a prompt always stay together). Each micro-batch's loss is aggregated
on its own and divided by the number of micro-batches (as TRL and verl do with gradient
accumulation), then one optimizer step follows (the backend's). `num_iterations` (mu) repeats
this on the same rollout; old log-probs are only computed when mu > 1 (with mu == 1 the ratio
is exactly 1 and old == current, detached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grpo.algorithm.loss import ClipRange, aggregate_loss, kl_k3, policy_loss_with_kl
from grpo.rollout.batch import RolloutBatch


@dataclass(frozen=True)
class LossSettings:
    """The recipe's `loss` section, as the update uses it."""

    policy: str  # a name in grpo.algorithm.POLICY_LOSSES
    beta: float
    clip: ClipRange
    aggregation: str
    max_tokens: int  # the completion cap, for Dr. GRPO's constant normalizer


@dataclass(frozen=True)
class ScoringPlan:
    """How the log-prob passes run: the sampling temperature, micro-batch size, prompt reuse."""

    temperature: float
    prompts_per_micro_batch: int
    shared_prefix: bool = True  # one prompt pass per group (False under gradient checkpointing)


def loss_settings(cfg) -> LossSettings:
    """The update's loss settings from a recipe's Config (train.py and bench/ours.py run the same step)."""
    lo = cfg.loss
    return LossSettings(lo.policy, lo.beta, ClipRange(lo.eps_low, lo.eps_high, lo.dual_clip_c), lo.aggregation,
                        cfg.rollout.max_new_tokens)


def scoring_plan(cfg) -> ScoringPlan:
    """How a recipe's log-prob passes run; HF drops the KV cache under gradient checkpointing, so
    the prompt is then not shared."""
    return ScoringPlan(cfg.rollout.temperature, cfg.train.batch_size // cfg.rollout.group_size,
                       shared_prefix=not cfg.model.gradient_checkpointing)


@dataclass
class UpdateTargets:
    """What the loss compares against, per completion row of the rollout.

    advantages (B,); old_logp, ref_logp (B, T) or None; loss_mask (B, T): the tokens that train;
    token_weights (B, T) or None: per-token coefficients on their loss.
    """

    advantages: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    loss_mask: torch.Tensor
    token_weights: torch.Tensor | None = None


def micro_batches(batch: RolloutBatch, prompts_per_micro_batch: int):
    """(first row, sub-batch) of each micro-batch, in order."""
    for start in range(0, batch.num_prompts, prompts_per_micro_batch):
        stop = min(start + prompts_per_micro_batch, batch.num_prompts)
        yield start * batch.group_size, batch.prompts_slice(start, stop)


def _device(score) -> torch.device:
    return next(score.parameters()).device


@torch.no_grad()
def frozen_logprobs(score, batch: RolloutBatch, plan: ScoringPlan) -> torch.Tensor:
    """Log-probs (B, T) under frozen weights: the reference (the caller disables the adapter, or
    passes the frozen copy's scorer) or the pre-update policy (old log-probs). On the scorer's device.

    score: a CompletionScorer, or the DeepSpeed engine wrapping one.
    """
    out = torch.zeros(batch.completion_ids.shape, device=_device(score))
    for row, part in micro_batches(batch, plan.prompts_per_micro_batch):
        logp = score(part, plan.temperature, plan.shared_prefix)
        out[row : row + logp.shape[0], : logp.shape[1]] = logp.float()
    return out


def policy_update(score, backend, batch: RolloutBatch, targets: UpdateTargets, loss: LossSettings,
                  plan: ScoringPlan, collect_stats: bool) -> dict:
    """One optimizer step over all micro-batches of the rollout; returns logging stats.

    score: a CompletionScorer, or the DeepSpeed engine wrapping one; backend: its `backward(loss)`
    and `step(loss_finite) -> {"grad_norm", "lr", "skipped"}` (grpo/runtime/backends.py; a
    non-finite loss or gradient norm changes nothing). Stats: the loss, and with
    collect_stats the token means of the KL and of each of the policy loss's indicators
    (e.g. clip_frac). Values stay on the device until the step is over (one host read).
    """
    device = _device(score)
    parts = list(micro_batches(batch, plan.prompts_per_micro_batch))
    loss_sum = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    for row, part in parts:
        rows = slice(row, row + part.completion_ids.shape[0])
        width = part.completion_ids.shape[1]
        mask = targets.loss_mask[rows, :width].to(device)
        logp = score(part, plan.temperature, plan.shared_prefix)
        old = logp.detach() if targets.old_logp is None else targets.old_logp[rows, :width].to(device)
        ref = None if targets.ref_logp is None else targets.ref_logp[rows, :width].to(device)
        adv = targets.advantages[rows].to(device)
        out = policy_loss_with_kl(loss.policy, logp, old, ref, adv, mask, loss.clip, loss.beta)
        per_token = out.per_token
        if targets.token_weights is not None:
            per_token = per_token * targets.token_weights[rows, :width].to(device)
        micro_loss = aggregate_loss(per_token, mask, loss.aggregation, loss.max_tokens) / len(parts)
        backend.backward(micro_loss)
        loss_sum += micro_loss.detach()
        if collect_stats:
            with torch.no_grad():
                counted = {"tokens": mask.sum()}
                if ref is not None:
                    counted["kl"] = (kl_k3(logp, ref) * mask).sum()
                for name, indicator in out.indicators.items():
                    counted[name] = (indicator.float() * mask).sum()
                for name, value in counted.items():
                    sums[name] = sums.get(name, 0) + value
    loss_value = loss_sum.item()
    stats = {"loss": loss_value, **backend.step(loss_finite=math.isfinite(loss_value))}
    if collect_stats:
        tokens = max(sums.pop("tokens").item(), 1.0)
        stats.update({name: value.item() / tokens for name, value in sums.items()})
        stats.setdefault("kl", float("nan"))  # no reference pass (beta = 0)
    return stats


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class NonFiniteGuard:
    """Counts steps in a row whose every update was skipped as non-finite (the backend skips them:
    no optimizer or schedule step); at `limit` it stops the run, naming the last good checkpoint."""

    def __init__(self, limit: int):
        self.limit, self.steps = limit, []

    def record(self, step: int, skipped: bool, last_checkpoint) -> None:
        self.steps = [*self.steps, step] if skipped else []
        if len(self.steps) >= self.limit:
            raise NonFiniteError(
                f"{len(self.steps)} steps in a row ({self.steps[0]}-{self.steps[-1]}) had a non-finite loss or "
                f"gradient norm and changed nothing; the last good checkpoint is {last_checkpoint}. Lower "
                "train.learning_rate, look at the rewards in metrics.jsonl, or raise train.max_nonfinite_steps"
            )
