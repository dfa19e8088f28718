"""The policy update: the objective's loss over micro-batches, one optimizer step.

An optimizer step trains on a mini-batch of the rollout (the whole rollout unless
train.mini_batches > 1), cut into micro-batches of `batch_size / G` prompts (all G completions of
a prompt always stay together). Before the first backward the step's totals are counted over all
its micro-batches and all ranks (one collective): every micro-batch's loss is its share of the
step's loss divided by those totals (grpo/algorithm/loss.py aggregate_loss), so the gradient does
not depend on how the step is cut into micro-batches or processes. Then one optimizer step follows
(the backend's).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from grpo.algorithm.loss import (
    ClipRange, aggregate_loss, aggregation_counts, kl_k3, per_token, policy_loss_spec, sampler_mismatch,
    with_entropy_bonus, with_kl,
)
from grpo.objectives.base import LossSettings, Objective, Targets
from grpo.rollout.batch import RolloutBatch
from grpo.rollout.logprobs import LogProbPlan, micro_batches, pass_device
from grpo.runtime import distributed
from grpo.runtime.distributed import World


MAX = "max/"  # a logged per-token value reduced by its largest element, not its token mean


def logprob_plan(cfg) -> LogProbPlan:
    """How a recipe's log-prob passes run; HF drops the KV cache under gradient checkpointing, so
    the prompt is then not shared."""
    return LogProbPlan(cfg.rollout.temperature, cfg.train.batch_size // cfg.rollout.group_size,
                       shared_prefix=not cfg.model.gradient_checkpointing)


def micro_batch_loss(logprobs, part: RolloutBatch, micro: Targets, objective: Objective, loss: LossSettings,
                     plan: LogProbPlan):
    """One micro-batch's forward pass and per-token loss (b, T): the objective's, plus the KL term and the
    entropy bonus. Returns (logp (b, T), the per-token loss, the per-token values logged as token means)."""
    options = objective.pass_options(micro)
    if loss.entropy_coef:
        options["with_entropy"] = True
    out = logprobs(part, plan.temperature, plan.shared_prefix, **options)
    old = out.logp.detach() if micro.old_logp is None else micro.old_logp
    result = objective.per_token_loss(out, old, micro, part)
    policy = result.per_token if micro.correction is None else result.per_token * micro.correction
    per_token = with_kl(policy, out.logp, micro.ref_logp, loss.beta)
    per_token = with_entropy_bonus(per_token, out.entropy, loss.entropy_coef)
    indicators = dict(result.indicators)
    if micro.sampler_logp is not None:  # the sampler against the trainer at the sampling policy (`old`)
        indicators["rollout/mismatch_kl"], indicators[f"{MAX}rollout/mismatch_ratio"] = sampler_mismatch(
            old, micro.sampler_logp)
    if micro.ref_logp is not None:
        indicators["kl"] = kl_k3(out.logp, micro.ref_logp)
    if out.entropy is not None:
        indicators["policy_entropy"] = out.entropy
    return out.logp, per_token, indicators


def policy_update(logprobs, backend, batch: RolloutBatch, targets: Targets, objective: Objective,
                  loss: LossSettings, plan: LogProbPlan, world: World,
                  before_micro_batch=None) -> tuple[dict, dict[str, torch.Tensor]]:
    """One optimizer step over the micro-batches of `batch` (a mini-batch of the rollout).

    logprobs: the backend's log-prob pass (a LogProbPass, or the DeepSpeed engine wrapping one);
    backend: its `backward(loss)` and `step(loss_finite) -> {"grad_norm", "lr", "skipped"}`
    (grpo/backends; a non-finite loss or gradient norm changes nothing). Every rank calls it with its
    share of the mini-batch. Returns (stats, sums): stats = the loss (the step's, whole, as on one
    process) and the backend's; sums = this rank's token sums of each logged per-token value and the
    token count "tokens", on the device (the caller reduces them over updates and ranks).
    before_micro_batch(): called before each micro-batch's pass (the step's stop check: it may raise
    before the optimizer step, which then never happens).
    """
    device = pass_device(logprobs)
    select = policy_loss_spec(loss.policy).step_selection
    if select is not None and targets.old_logp is not None:  # KL-Cov: its tokens chosen over the whole step
        targets = dataclasses.replace(targets, selected=step_selection(
            select, targets.old_logp, objective.step_advantages(targets), targets.loss_mask, loss.clip, world))
    # The step's totals over all micro-batches and ranks. The backends average gradients over ranks, so
    # each rank's share of the loss is scaled by their number: the shares then sum to the step's loss.
    counts = distributed.sum_over_ranks(aggregation_counts(targets.loss_mask).to(device), world)
    loss_sum = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    parts = list(micro_batches(batch, plan.prompts_per_micro_batch))
    for index, (row, part) in enumerate(parts):
        if before_micro_batch is not None:
            before_micro_batch()
        rows = slice(row, row + part.completion_ids.shape[0])
        micro = targets.rows(rows, part.completion_ids.shape[1], device)
        logp, per_token, indicators = micro_batch_loss(logprobs, part, micro, objective, loss, plan)
        mask = micro.loss_mask
        micro_loss = aggregate_loss(per_token, mask, loss.aggregation, loss.max_tokens, counts) * world.size
        backend.backward(micro_loss, last=index == len(parts) - 1)
        loss_sum += micro_loss.detach()
        with torch.no_grad():
            for name, value in {"tokens": mask, **{k: v.float() * mask for k, v in indicators.items()}}.items():
                if name.startswith(MAX):
                    sums[name] = torch.maximum(sums[name], value.max()) if name in sums else value.max()
                else:
                    sums[name] = sums.get(name, 0) + value.sum()
    loss_value = loss_sum.item()
    return {"loss": loss_value, **backend.step(loss_finite=math.isfinite(loss_value))}, sums


def step_selection(select, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipRange,
                   world: World) -> torch.Tensor:
    """A policy loss's token selection (B, T) over the rows of every rank (collectives), this rank's rows of it:
    the same tokens as one process holding the whole step."""
    rows = {"old": old_logp.float().cpu(), "adv": per_token(advantages).expand_as(old_logp).float().cpu(),
            "mask": mask.float().cpu()}
    every = distributed.gather_rows(rows, world)
    chosen = select(every["old"], every["adv"], every["mask"], clip)
    start = distributed.rows_before(old_logp.shape[0], world)
    return chosen[start : start + old_logp.shape[0], : old_logp.shape[1]].to(old_logp.device)


def token_means(sums: list[dict[str, torch.Tensor]], world: World) -> dict[str, float]:
    """The token mean of each logged value over every update of a step and every rank (collectives): each
    update's and rank's sums weighted by their tokens; a value named max/... is the largest one, under its
    name less the prefix. "kl" is NaN when there was no reference pass."""
    names = sorted({name for update in sums for name in update})
    means = [n for n in names if not n.startswith(MAX)]
    totals = torch.stack([sum(update.get(name, 0) for update in sums) for name in means]).double()
    totals = dict(zip(means, distributed.sum_over_ranks(totals, world).tolist()))
    tokens = max(totals.pop("tokens"), 1.0)
    out = {"kl": float("nan"), **{name: value / tokens for name, value in totals.items()}}
    for name in (n for n in names if n.startswith(MAX)):
        largest = torch.stack([update[name] for update in sums if name in update]).max().double()
        out[name.removeprefix(MAX)] = distributed.max_over_ranks(largest, world).item()
    return out


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
