"""Stages 1-2 of a step: this rank's rollout (G completions per prompt) and the rewards of the step.

Each rank samples its contiguous share of the step's prompts. The rewards' batch statistics (POW3R's
dynamic weights, GDPO's and advantage.scale=batch's normalization) are taken over the rows of every
rank, gathered in rank order, which is one process's order: a step's advantages do not depend on the
number of processes.

DAPO's dynamic sampling on any number of ranks: each round every rank samples its share of a fresh
draw of `prompts_per_step` prompts; the round's reward columns are gathered (the one collective of a
round), so every rank sees the same groups with reward spread and keeps, in global order, the first
ones the step still needs. All ranks therefore run the same rounds and agree on the kept groups; each
trains the kept groups it sampled (nothing moves between ranks), and since the loss is divided by the
step's totals (grpo/training/update.py) the gradient is that of one process with the same seed. Ranks
holding fewer kept groups than the most loaded one add copies of a sampled group with no token in
the loss (`padding`), so every rank runs the same passes (ZeRO-3 needs them in lockstep).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from grpo.algorithm.groups import has_spread
from grpo.rollout import rewarding
from grpo.rollout.batch import RolloutBatch, concat_batches
from grpo.environments import Episode
from grpo.rollout.agent import prompt_messages, run_episodes
from grpo.rollout.generation import generate
from grpo.rollout.sampling import SamplingParams
from grpo.runtime import distributed
from grpo.runtime.config import Config
from grpo.runtime.distributed import World
from grpo.training import reward_shaping

log = logging.getLogger(__name__)


@dataclass
class StepRollout:
    """This rank's rollout of one step and the step's rewards over every rank.

    batch: this rank's groups (possibly none); scores (B, K): their reward matrix (NaN = not
    applicable); shaped: the step's shaped rewards over every rank's rows (global order); global_rows
    (B,): this rank's rows in `shaped`; padding: groups this rank adds with no token in the loss, so it
    runs as many passes as the others (None: none); prompts, rows: each group's prompt text and data
    row, in batch order.
    """

    batch: RolloutBatch
    scores: torch.Tensor
    shaped: reward_shaping.ShapedRewards
    global_rows: torch.Tensor
    info: dict
    prompts: list
    rows: list[dict]
    padding: RolloutBatch | None = None
    completions: list | None = None  # each row's completion as the rewards read it (an agent's conversation)
    episode_stats: torch.Tensor | None = None  # (B, 4) turns, tool calls, invalid calls, failed start (agents)
    records: list = field(default_factory=list)  # (curriculum key, level, success) of every episode played

    @property
    def total(self) -> torch.Tensor:
        """(B,) the weighted total reward of each of this rank's completions."""
        return self.shaped.total[self.global_rows]

    @property
    def num_groups(self) -> int:
        """Groups of the step over every rank."""
        return self.shaped.total.shape[0] // self.batch.group_size


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


@dataclass
class _Round:
    """One draw of the step's prompts: this rank's share, sampled and rewarded, and the draw's reward
    columns over every rank."""

    batch: RolloutBatch
    matrix: torch.Tensor  # (B, K) this rank's
    every: torch.Tensor  # (rows of all ranks, K' + 1) in rank order: the reward columns, then the length
    first_group: int  # this rank's first group in the draw's global order
    prompts: list
    rows: list[dict]
    completions: list
    episode_stats: torch.Tensor | None
    records: list


def collect_rollouts(backend, tokenizer, cfg: Config, prompts, reward_fns: list[rewarding.WeightedReward],
                     step: int, world: World, max_new_tokens: int | None = None,
                     after_generation=lambda: None, agents=None, stop=None) -> StepRollout:
    """This rank's rollout and the step's rewards (max_new_tokens: the step's horizon, if not the recipe's).
    prompts: a PromptSet or LeveledRows (grpo/training/prompts.py); agents: the run's environments
    (grpo/training/agents.py), whose episodes replace single completions; after_generation(): called after
    each draw's sampling, before its rewards (the step's stop check); stop() -> bool: a stop request, which
    ends the sampler's decode at its next look (the step is then abandoned).

    With DAPO dynamic sampling, groups whose totals are all equal are dropped and further prompts drawn
    (each round from its own seeded order, so resuming stays exact) until the step's prompts carry
    signal or rollout.dynamic_sampling_max_tries extra rounds are spent; a short batch then trains as
    it is (logged: dynamic_sampling/groups).
    """
    r, v, g = cfg.rollout, cfg.reward_shaping, cfg.rollout.group_size
    max_new = max_new_tokens or r.max_new_tokens
    per_step, base, params = prompts_per_step(cfg, world), reward_weights(reward_fns), sampling_params(cfg, max_new)
    generating = 0.0  # seconds in the sampler, over all rounds

    def draw(attempt: int) -> _Round:
        nonlocal generating
        chosen, seeds = prompts.draw(step, per_step, cfg.train.seed + attempt * 7_919, world)
        started = time.perf_counter()
        if agents is None:
            with backend.generation() as policy:
                batch = generate(policy, tokenizer, chosen.tokens, g, params, seeds, compiled=r.compile, abort=stop)
            completions, extra, stats, episodes = batch.texts, {}, None, None
        else:
            episodes = agents.start([row for row in chosen.rows for _ in range(g)])
            with backend.generation() as policy:
                played = run_episodes(policy, tokenizer, episodes, g, params, seeds, agents.settings, abort=stop)
            batch, completions = played.batch, played.conversations
            stats = _episode_stats(episodes)
            extra = {"env_reward": [_env_reward(e) for e in episodes], "env_calls": stats[:, 1].tolist(),
                     "env_invalid": stats[:, 2].tolist()}
        generating += time.perf_counter() - started
        after_generation()
        columns_in = {**rewarding.expand_columns(chosen.rows, g), **extra}
        matrix = rewarding.reward_matrix(reward_fns, completions, columns_in)  # (B, K)
        columns = reward_shaping.reward_columns(matrix, batch, v, max_new)  # (B, K')
        lengths = batch.completion_mask.sum(1, keepdim=True).to(columns.dtype)  # (B, 1)
        every, sizes = distributed.gather_with_sizes(torch.cat([columns, lengths], dim=1), world)
        start = sum(sizes[: world.rank])
        total = _shaped(every, base, g, v).total[start:start + batch.completion_ids.shape[0]]
        records = _records(chosen.rows, g, total, episodes, agents, cfg.env.success_threshold)
        logged_prompts = [row["prompt"] for row in chosen.rows] if agents is None else [
            _episode_prompt(episodes[i * g : (i + 1) * g], row["prompt"]) for i, row in enumerate(chosen.rows)]
        return _Round(batch, matrix, every, start // g, logged_prompts, chosen.rows, completions, stats, records)

    if not r.dynamic_sampling:
        one = draw(0)
        shaped = _shaped(one.every, base, g, v)
        start = one.first_group * g
        rows = torch.arange(start, start + one.batch.completion_ids.shape[0])
        return StepRollout(one.batch, one.matrix, shaped, rows, {**shaped.info, "time/generate_s": generating},
                           one.prompts, one.rows, completions=one.completions, episode_stats=one.episode_stats,
                           records=one.records)
    return _dynamic_rollout(draw, cfg, per_step, base, world, step, tokenizer.pad_token_id,
                            lambda: generating)


def _dynamic_rollout(draw, cfg: Config, per_step: int, base: torch.Tensor, world: World, step: int, pad_id: int,
                     generating) -> StepRollout:
    r, v, g = cfg.rollout, cfg.reward_shaping, cfg.rollout.group_size
    kept_columns, mine, parts = [], [], []  # every rank's kept rows; this rank's positions among them; its groups
    records, completions, stats = [], [], []
    kept_per_rank = [0] * world.size
    needed = per_step
    for attempt in range(1 + r.dynamic_sampling_max_tries):
        one = draw(attempt)
        records += one.records
        total = _shaped(one.every, base, g, v).total
        groups = has_spread(total, g).nonzero().squeeze(1).tolist()[:needed]  # global groups, in order
        local = one.batch.num_prompts
        own = [i - one.first_group for i in groups if one.first_group <= i < one.first_group + local]
        position = sum(c.shape[0] for c in kept_columns)  # rows kept before this round
        for j, i in enumerate(groups):
            kept_per_rank[_rank_of(i, one.every.shape[0] // g, world)] += 1
            if one.first_group <= i < one.first_group + local:
                mine.extend(range(position + j * g, position + (j + 1) * g))
        kept_columns.append(one.every[[i * g + k for i in groups for k in range(g)]])
        rows = [i * g + k for i in own for k in range(g)]
        parts.append((one.batch.select_groups(own), one.matrix[rows], [one.prompts[i] for i in own],
                      [one.rows[i] for i in own]))
        completions += [one.completions[k] for k in rows]
        if one.episode_stats is not None:
            stats.append(one.episode_stats[rows])
        needed -= len(groups)
        if needed == 0:
            break
    every = torch.cat(kept_columns)
    batch = concat_batches([b for b, _, _, _ in parts], pad_id)
    shaped = _shaped(every, base, g, v)
    kept = every.shape[0] // g
    if kept == 0:  # nothing had signal: every rank skips the step
        log.warning("step %d: no group with reward spread after %d rounds", step, attempt + 1)
    padding = max(kept_per_rank) - batch.num_prompts
    info = {**shaped.info, "dynamic_sampling/tries": attempt + 1, "dynamic_sampling/groups": kept,
            "time/generate_s": generating()}
    return StepRollout(batch, torch.cat([m for _, m, _, _ in parts]), shaped, torch.tensor(mine, dtype=torch.long),
                       info, [p for _, _, prompts, _ in parts for p in prompts], [row for *_, rows in parts for row in rows],
                       one.batch.select_groups([0] * padding) if padding and kept else None, completions,
                       torch.cat(stats) if stats else None, records)


def _env_reward(episode) -> float | None:
    """An episode's get_reward(), None without one; an environment's failing get_reward is logged, and its row
    counts as not applicable (like a reward plugin's bug)."""
    from grpo.environments import EnvironmentFailure, Episode

    if not isinstance(episode, Episode):
        return None
    try:
        return episode.reward()
    except EnvironmentFailure as failure:
        log.error("%s\n%s", failure.message, failure.traceback)
        return None


def _episode_stats(episodes) -> torch.Tensor:
    """(B, 4): each episode's turns, tool calls, invalid calls, and 1 where its environment failed to start."""
    from grpo.environments import Episode

    return torch.tensor([[e.counts["turns"], e.counts["calls"], e.counts["invalid"], 0] if isinstance(e, Episode)
                         else [0, 0, 0, 1] for e in episodes], dtype=torch.float32)


def _records(rows: list[dict], group_size: int, total: torch.Tensor, episodes, agents, threshold: float) -> list:
    """(curriculum key, level, success) of each completion of rows with a level (LeveledRows): success is the
    environment's (agents), else the total reward at `threshold` (env.success_threshold)."""
    if not rows or "curriculum_key" not in rows[0]:
        return []
    records = []
    for i, row in enumerate(rows):
        for j in range(group_size):
            k = i * group_size + j
            success = agents.success(episodes[k], float(total[k])) if agents is not None else bool(total[k] >= threshold)
            records.append((row["curriculum_key"], int(row["level"]), success))
    return records


def _shaped(every: torch.Tensor, base: torch.Tensor, group_size: int, v) -> reward_shaping.ShapedRewards:
    """The shaped rewards of gathered rows (reward columns, then the completion length)."""
    return reward_shaping.shape_rewards(every[:, :-1], every[:, -1], base, group_size, v)


def _rank_of(group: int, groups: int, world: World) -> int:
    """The rank that sampled global group `group` of a draw of `groups` (contiguous shares)."""
    return next(rank for rank in range(world.size)
                if group in distributed.rank_share(groups, World(rank, world.size)))


def _episode_prompt(group: list, fallback):
    """The prompt a group's first started episode saw (the row's messages with what its reset added), for the
    log; the row's own prompt when none of its episodes started."""
    for episode in group:
        if isinstance(episode, Episode):
            return prompt_messages(episode)
    return fallback
