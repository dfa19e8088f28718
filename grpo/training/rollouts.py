"""Stages 1-2 of a step: this rank's rollout (G completions per prompt) and its rewards."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from grpo.algorithm.groups import has_spread
from grpo.rollout import rewarding
from grpo.rollout.batch import RolloutBatch, concat_batches
from grpo.rollout.generation import generate
from grpo.rollout.sampling import SamplingParams
from grpo.runtime.config import Config
from grpo.runtime.distributed import World
from grpo.training import reward_shaping
from grpo.training.prompts import PromptSet, rank_prompts

log = logging.getLogger(__name__)


@dataclass
class StepRollout:
    """This rank's rollout of one step: the batch, the (B, K) reward matrix (NaN = not
    applicable), the shaped rewards the advantages come from, and what to log."""

    batch: RolloutBatch
    scores: torch.Tensor
    shaped: reward_shaping.ShapedRewards
    info: dict
    prompts: list[str]  # each group's prompt text, in batch order
    rows: list[dict]  # each group's data row, in batch order

    @property
    def total(self) -> torch.Tensor:
        """(B,) the weighted total reward of each completion."""
        return self.shaped.total


def sampling_params(cfg: Config, max_new_tokens: int | None = None) -> SamplingParams:
    """The recipe's sampling; max_new_tokens overrides rollout.max_new_tokens (a distillation horizon)."""
    r = cfg.rollout
    return SamplingParams(r.temperature, r.top_p, max_new_tokens or r.max_new_tokens, tuple(r.stop_strings))


def prompts_per_step(cfg: Config, world: World) -> int:
    """Prompts of one optimizer step over all ranks."""
    t = cfg.train
    return t.batch_size // cfg.rollout.group_size * t.grad_accum_steps * world.size


def reward_weights(reward_fns: list[rewarding.WeightedReward]) -> torch.Tensor:
    return torch.tensor([rf.weight for rf in reward_fns])  # (K,)


def collect_rollouts(backend, tokenizer, cfg: Config, prompts: PromptSet, reward_fns: list[rewarding.WeightedReward],
                     step: int, world: World, max_new_tokens: int | None = None) -> StepRollout:
    """This rank's rollout and reward for one step (max_new_tokens: the step's horizon, if not the recipe's).

    With DAPO dynamic sampling (one process only), groups whose totals are all equal are dropped
    and further prompts drawn (each try from its own seeded order, so resuming stays exact) until
    the step's prompts carry signal or the tries run out; a short batch then trains as it is.
    """
    r, v, g = cfg.rollout, cfg.reward_shaping, cfg.rollout.group_size
    max_new = max_new_tokens or r.max_new_tokens
    per_step, weights, params = prompts_per_step(cfg, world), reward_weights(reward_fns), sampling_params(cfg, max_new)
    kept, needed, tries = [], per_step, 1 + (r.dynamic_sampling_max_tries if r.dynamic_sampling else 0)
    generating = 0.0  # seconds in the sampler, over all tries
    for attempt in range(tries):
        indices, seeds = rank_prompts(len(prompts), step, per_step, cfg.train.seed + attempt * 7_919, world)
        chosen = prompts.subset(indices)
        started = time.perf_counter()
        with backend.generation() as policy:
            batch = generate(policy, tokenizer, chosen.tokens, g, params, seeds, compiled=cfg.rollout.compile)
        generating += time.perf_counter() - started
        matrix = rewarding.reward_matrix(reward_fns, batch.texts, rewarding.expand_columns(chosen.rows, g))  # (B, K)
        texts = [row["prompt"] for row in chosen.rows]
        if not r.dynamic_sampling:
            shaped = reward_shaping.shape_rewards(matrix, weights, batch, v, max_new)
            return StepRollout(batch, matrix, shaped, {**shaped.info, "time/generate_s": generating}, texts,
                               chosen.rows)
        total = reward_shaping.shape_rewards(matrix, weights, batch, v, max_new).total
        groups = has_spread(total, g).nonzero().squeeze(1).tolist()[:needed]
        rows_kept = [i * g + j for i in groups for j in range(g)]
        kept.append((batch.select_groups(groups), matrix[rows_kept], [texts[i] for i in groups],
                     [chosen.rows[i] for i in groups]))
        needed -= len(groups)
        if needed == 0:
            break
    batch = concat_batches([b for b, _, _, _ in kept], tokenizer.pad_token_id)
    matrix = torch.cat([m for _, m, _, _ in kept])
    if batch.num_prompts == 0:  # nothing had signal: train on nothing rather than crash
        log.warning("step %d: no group with reward spread after %d tries", step, tries)
    shaped = reward_shaping.shape_rewards(matrix, weights, batch, v, max_new)
    info = {**shaped.info, "dynamic_sampling/tries": attempt + 1, "dynamic_sampling/groups": batch.num_prompts,
            "time/generate_s": generating}
    return StepRollout(batch, matrix, shaped, info, [t for _, _, texts, _ in kept for t in texts],
                       [row for _, _, _, rows in kept for row in rows])
