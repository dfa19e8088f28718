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

from grpo.algorithm.loss import ClipRange, PolicyLoss, aggregate_loss, kl_k3, policy_loss_with_kl, with_kl
from grpo.research.delta import delta_token_weights, gradient_features
from grpo.research.distil import distil_per_token_loss, forward_cross_entropy
from grpo.research.distillation import reverse_kl_advantages
from grpo.rollout.batch import RolloutBatch


@dataclass(frozen=True)
class LossSettings:
    """The recipe's `loss` section and training objective, as the update uses them."""

    policy: str  # a name in grpo.algorithm.POLICY_LOSSES
    beta: float
    clip: ClipRange
    aggregation: str
    max_tokens: int  # the completion cap, for Dr. GRPO's constant normalizer
    objective: str = "grpo"  # grpo | opd | distil (train.objective)
    token_credit: str = "none"  # paper: DelTA coefficients from this pass's token-gradient features
    delta: tuple[float, float, int] = (0.8, 1.2, 1)  # DelTA's lam_min, lam_max, refinement steps
    future_weight: float = 1.0  # distil: weight of the sequence term


@dataclass(frozen=True)
class ScoringPlan:
    """How the log-prob passes run: the sampling temperature, micro-batch size, prompt reuse."""

    temperature: float
    prompts_per_micro_batch: int
    shared_prefix: bool = True  # one prompt pass per group (False under gradient checkpointing)


def loss_settings(cfg) -> LossSettings:
    """The update's loss settings from a recipe's Config (train.py and bench/ours.py run the same step)."""
    lo = cfg.loss
    clip = ClipRange(lo.eps_low, lo.eps_high, lo.dual_clip_c, lo.kl_cov_ratio, lo.kl_cov_coef)
    v = cfg.variants
    return LossSettings(lo.policy, lo.beta, clip, lo.aggregation, cfg.rollout.max_new_tokens, cfg.train.objective,
                        v.token_credit, (v.delta_lam_min, v.delta_lam_max, v.delta_refine_steps),
                        cfg.distill.future_weight)


def scoring_plan(cfg) -> ScoringPlan:
    """How a recipe's log-prob passes run; HF drops the KV cache under gradient checkpointing, so
    the prompt is then not shared."""
    return ScoringPlan(cfg.rollout.temperature, cfg.train.batch_size // cfg.rollout.group_size,
                       shared_prefix=not cfg.model.gradient_checkpointing)


@dataclass
class UpdateTargets:
    """What the loss compares against, per completion row of the rollout.

    advantages (B,) (grpo; unused otherwise); old_logp, ref_logp (B, T) or None; loss_mask (B, T):
    the tokens that train; token_weights (B, T) or None: per-token coefficients on their loss;
    teacher_logp (B, T): opd's teacher log-probs of the sampled tokens; teacher_ids, teacher_probs
    (B, T, K): distil's teacher distribution (its top K tokens).
    """

    advantages: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    loss_mask: torch.Tensor
    token_weights: torch.Tensor | None = None
    teacher_logp: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None
    teacher_probs: torch.Tensor | None = None


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


def _rows(tensor: torch.Tensor, rows: slice, width: int, device) -> torch.Tensor:
    return tensor[rows, :width].to(device)


def micro_batch_loss(score, part: RolloutBatch, rows: slice, width: int, mask: torch.Tensor,
                     targets: UpdateTargets, loss: LossSettings, plan: ScoringPlan):
    """One micro-batch's forward pass and per-token loss (b, T), as the objective defines it.

    Returns (logp, per-token loss with its KL term and token weights applied, per-token values whose
    token means are logged: the policy loss's indicators, opd's reverse KL, distil's cross-entropy).
    grpo: the registered policy loss on the group advantages; opd: the same loss on per-token
    advantages, the teacher's log-prob minus the sampling policy's; distil: DistIL's surrogate on
    the teacher's top-K distribution. DelTA's coefficients (token_credit=paper) come from this
    pass's hidden states and scale the advantages.
    """
    device = mask.device
    distil = loss.objective == "distil"
    extras = {}
    if loss.token_credit == "paper":
        extras["with_hidden"] = True
    if distil:
        extras["gather_ids"] = _rows(targets.teacher_ids, rows, width, device)
    scored = score(part, plan.temperature, plan.shared_prefix, **extras)
    logp = scored if isinstance(scored, torch.Tensor) else scored.logp
    old = logp.detach() if targets.old_logp is None else _rows(targets.old_logp, rows, width, device)
    ref = None if targets.ref_logp is None else _rows(targets.ref_logp, rows, width, device)
    if distil:
        per_token = distil_per_token_loss(scored.gathered, _rows(targets.teacher_probs, rows, width, device), logp,
                                          mask, part.group_size, loss.future_weight)
        out = PolicyLoss(with_kl(per_token, logp, ref, loss.beta),
                         {"distil/cross_entropy": forward_cross_entropy(scored.gathered.detach(),
                                                                        _rows(targets.teacher_probs, rows, width,
                                                                              device))})
    else:
        if loss.objective == "opd":
            adv = reverse_kl_advantages(old, _rows(targets.teacher_logp, rows, width, device), mask)
        else:
            adv = targets.advantages[rows].to(device)
        if loss.token_credit == "paper":  # DelTA: each token's advantage times its coefficient, A_t -> w_t A_t
            weights = delta_token_weights(gradient_features(scored.hidden, logp.detach()), mask, adv,
                                          part.group_size, *loss.delta)
            adv = weights * adv.unsqueeze(1)
        out = policy_loss_with_kl(loss.policy, logp, old, ref, adv, mask, loss.clip, loss.beta)
        if loss.objective == "opd":
            out.indicators["opd/reverse_kl"] = -adv
    per_token = out.per_token
    if targets.token_weights is not None:
        per_token = per_token * _rows(targets.token_weights, rows, width, device)
    return logp, per_token, out.indicators


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
        logp, per_token, indicators = micro_batch_loss(score, part, rows, width, mask, targets, loss, plan)
        ref = None if targets.ref_logp is None else targets.ref_logp[rows, :width].to(device)
        micro_loss = aggregate_loss(per_token, mask, loss.aggregation, loss.max_tokens) / len(parts)
        backend.backward(micro_loss)
        loss_sum += micro_loss.detach()
        if collect_stats:
            with torch.no_grad():
                counted = {"tokens": mask.sum()}
                if ref is not None:
                    counted["kl"] = (kl_k3(logp, ref) * mask).sum()
                for name, indicator in indicators.items():
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
