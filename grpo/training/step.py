"""One training step, the function train.py's loop and bench/ours.py both call, and its log record.

Stages, in order: 1-2 rollout (G completions per prompt) and rewards; 3 advantages and the tokens
that train; 4 frozen log-probs (the reference for the KL, the sampling policy's when more than one
optimizer step trains on the rollout, the objective's own targets); 5 the updates: train.mini_batches
optimizer steps per pass over the rollout, each on its own share of the groups, num_iterations passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from grpo.algorithm.loss import rollout_correction_weights
from grpo.objectives import Targets
from grpo.rollout.batch import concat_batches
from grpo.rollout.logprobs import frozen_logprobs
from grpo.runtime import distributed
from grpo.training import metrics, reward_shaping
from grpo.training.metrics import device_memory
from grpo.training.policy import seed_step
from grpo.training.rollouts import StepRollout, collect_rollouts
from grpo.training.agents import gather_records, level_success, update_curriculum
from grpo.training.setup import Run
from grpo.training.update import policy_update, token_means


@dataclass
class StepResult:
    """What a step did: this rank's rollout, its advantages (B,), the stats of each update, the time
    of each stage (seconds)."""

    rollout: StepRollout
    advantages: torch.Tensor
    updates: list[dict]
    token_means: dict[str, float]  # kl, clip fractions, ...: over every update and rank, token-weighted
    times: dict[str, float]

    @property
    def skipped(self) -> bool:
        """No update changed the model (each was non-finite)."""
        return all(u["skipped"] for u in self.updates)


class StepAbandoned(Exception):
    """A stop request came before the step's first optimizer step: the step changed nothing and the
    previous one is the last completed step."""


def train_step(run: Run, step: int, stop=lambda: False) -> StepResult | None:
    """Step `step` (1-based) on this rank; None when the rollout kept no prompt (dynamic sampling).

    stop() -> bool: a stop request (SIGTERM). Until the first optimizer step begins, the step checks it
    at its stages (all ranks together: a collective each) and raises StepAbandoned.
    """
    cfg, backend, plan = run.cfg, run.backend, run.plan

    def abandon_if_asked():
        if distributed.any_rank(stop(), run.world):
            raise StepAbandoned(step)

    started = time.perf_counter()
    seed_step(cfg.train.seed, step, run.world.rank)  # no RNG state crosses steps: resume is exact on any world size

    # 1-2. rollout and rewards
    rollout = collect_rollouts(backend, run.tokenizer, cfg, run.train_prompts, run.rewards, step, run.world,
                               run.objective.max_new_tokens(step), abandon_if_asked, run.agents, stop)
    generated = time.perf_counter()
    if rollout.num_groups == 0:  # dynamic sampling kept nothing on any rank
        return None

    # 3. advantages (the recipe's estimator, over the step's rows of every rank) and the tokens that train
    advantages = reward_shaping.advantages(rollout.shaped, cfg.rollout.group_size, cfg.advantage)[rollout.global_rows]
    batch = rollout.batch
    targets = Targets(reward_shaping.loss_mask(batch, cfg.tokens), advantages, rollout.total)
    if rollout.padding is not None:  # groups that run the passes with no token in the loss
        batch, targets = with_padding(batch, targets, rollout.padding, run.tokenizer.pad_token_id)
    targets.sampler_logp = batch.sampler_logprobs

    # 4. frozen log-probs: the reference (KL), the sampling policy's (when a later optimizer step trains on
    # this rollout: the ratio's denominator), the objective's targets
    if run.loss.beta > 0:
        with backend.reference_logprobs() as reference:
            targets.ref_logp = frozen_logprobs(reference, batch, plan)
    correcting = run.loss.rollout_correction != "none"
    if cfg.train.num_iterations * cfg.train.mini_batches > 1 or correcting:
        targets.old_logp = frozen_logprobs(backend.logprobs, batch, plan)
    if correcting:  # importance weights for the sampler/trainer mismatch (TRL's and verl's TIS / MIS)
        targets.correction = rollout_correction_weights(
            targets.old_logp, targets.sampler_logp.to(targets.old_logp.device), targets.loss_mask.to(
                targets.old_logp.device), run.loss.rollout_correction, run.loss.rollout_correction_cap)
    targets.frozen = run.objective.prepare(backend.logprobs, batch, rollout.rows, plan)
    frozen = time.perf_counter()
    abandon_if_asked()

    # 5. the updates: num_iterations passes over the mini-batches (a non-finite one is skipped by the backend)
    updates, sums = [], []
    for _ in range(cfg.train.num_iterations):
        for part, part_targets in mini_batches(batch, targets, cfg.train.mini_batches):
            stats, token_sums = policy_update(backend.logprobs, backend, part, part_targets, run.objective,
                                              run.loss, plan, run.world, abandon_if_asked if not updates else None)
            updates.append(stats)
            sums.append(token_sums)
    means = token_means(sums, run.world)
    if rollout.records:  # rows with levels: success by environment and level; RLVE moves its curriculum
        records = gather_records(rollout.records, run.world)
        means.update(level_success(records))
        if run.curriculum is not None:
            means.update(update_curriculum(run.curriculum, records))
    finished = time.perf_counter()
    times = {"time/step_s": finished - started, "time/rollout_and_reward_s": generated - started,
             "time/frozen_logprobs_s": frozen - generated, "time/update_s": finished - frozen}
    return StepResult(rollout, advantages, updates, means, times)


def with_padding(batch, targets: Targets, padding, pad_id: int):
    """`batch` followed by the `padding` groups, whose loss mask, advantages and rewards are 0."""
    rows = padding.completion_ids.shape[0]
    zeros = torch.zeros(rows)
    joined = concat_batches([batch, padding], pad_id)
    mask = torch.zeros(joined.completion_ids.shape)
    mask[: targets.loss_mask.shape[0], : targets.loss_mask.shape[1]] = targets.loss_mask
    return joined, Targets(mask, torch.cat([targets.advantages, zeros.to(targets.advantages.dtype)]),
                           torch.cat([targets.rewards, zeros.to(targets.rewards.dtype)]))


def mini_batches(batch, targets: Targets, count: int):
    """The rollout's groups in `count` mini-batches, (sub-batch, its targets) each: mini-batch m holds the
    groups m, m + count, m + 2 count, ... of this rank's share. Strided, so that every rank's m-th
    mini-batch together is the m-th of the whole step whatever the number of ranks (their shares are
    contiguous runs of a multiple of `count` groups)."""
    if count == 1:
        yield batch, targets
        return
    g = batch.group_size
    for m in range(count):
        groups = list(range(m, batch.num_prompts, count))
        yield batch.select_groups(groups), targets.select([i * g + j for i in groups for j in range(g)])


def step_record(run: Run, result: StepResult) -> dict:
    """The step's log record over all ranks (a collective): rows of every rank, per-rank scalars averaged
    (the loss and the token means are already the whole step's, the same on every rank)."""
    rollout, batch = result.rollout, result.rollout.batch
    trained = batch.completion_mask if batch.sampled_mask is None else batch.completion_mask * batch.sampled_mask
    columns = {"matrix": rollout.scores, "total": rollout.total, "mask": trained, "truncated": batch.truncated,
               "entropy": batch.token_entropy, "certainty": batch.token_certainty}
    if rollout.episode_stats is not None:
        columns["episodes"] = rollout.episode_stats
    rows = distributed.gather_rows(columns, run.world)
    first, last = result.updates[0], result.updates[-1]
    scalars = distributed.weighted_mean({
        **rollout.info, **first, "loss": last["loss"], "skipped": sum(u["skipped"] for u in result.updates),
        "updates": len(result.updates), **result.token_means, **result.times, **device_memory()}, run.world)
    record = metrics.step_record([r.name for r in run.rewards], rows, scalars, batch.group_size)
    if "episodes" in rows:
        record.update(metrics.episode_metrics(rows["episodes"]))
    return record


def completion_log(run: Run, result: StepResult) -> list[dict]:
    """The first whole groups of this rank's rollout for OUTPUT/completions.jsonl (an agent's whole conversation
    after the prompt)."""
    return metrics.completion_rows(result.rollout, result.advantages, [r.name for r in run.rewards],
                                   run.cfg.log.completions_per_step)
