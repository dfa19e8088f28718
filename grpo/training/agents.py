"""What a run of agents holds besides the single-turn loop: the environments and tools the recipe names
(`env`), how episodes run, the environment's reward as a reward column, and RLVE's curriculum.

- `build_agents(cfg, tokenizer)`: None for a single-turn recipe; else the loaded environments (TRL's
  convention, grpo/environments) and the episode settings (grpo/rollout/agent.py).
- `ENV_REWARD`: the reward named "env": each episode's `get_reward()` (None where its environment has
  none), weighted by env.reward_weight beside the recipe's rewards.
- `build_curriculum(cfg)`: one difficulty range per environment or dataset (data.task ecom,
  reasoning_gym), moved by the policy's success; every rank updates it with every rank's episodes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from grpo.environments import (
    Curriculum, CurriculumConfig, EnvironmentFailure, Environments, Episode, episode_success, load_environments,
    raise_if_all_failed, start_episodes,
)
from grpo.rollout import rewarding
from grpo.rollout.agent import AgentSettings, agent_settings
from grpo.runtime.config import Config
from grpo.runtime.distributed import World

log = logging.getLogger(__name__)


def env_reward(completions, env_reward=None, **columns) -> list:
    """The environment's own reward of each episode (the `env_reward` column the rollout fills)."""
    return list(env_reward) if env_reward is not None else [None] * len(completions)


@dataclass(frozen=True)
class Agents:
    """The run's environments and how their episodes run."""

    environments: Environments
    settings: AgentSettings
    reward: rewarding.WeightedReward  # "env": get_reward(), at env.reward_weight
    success_threshold: float

    def start(self, rows: list[dict]) -> list[Episode | EnvironmentFailure]:
        """One episode per row (each prompt's row repeated G times); every row failing is the environment's
        bug and stops the run with its traceback."""
        episodes = start_episodes(self.environments, rows)
        raise_if_all_failed(episodes)
        for failure in (e for e in episodes if isinstance(e, EnvironmentFailure)):
            log.error("%s (its row trains on nothing)\n%s", failure.message, failure.traceback)
        return episodes

    def success(self, episode, total: float) -> bool:
        """An episode's success: its environment's flag, else its reward (the environment's, or the total)
        at env.success_threshold."""
        if not isinstance(episode, Episode):
            return False
        return episode_success(_reward_or(episode, total), episode.success(), self.success_threshold)


def _reward_or(episode: Episode, total: float) -> float:
    try:
        value = episode.reward()
    except EnvironmentFailure:
        return total
    return total if value is None else value


def build_agents(cfg: Config, tokenizer) -> Agents | None:
    """The recipe's environments (env.factory / env.factories / env.tools; data.task=ecom: the e-commerce gym's
    data.ecom_environments), or None for a single-turn recipe."""
    e = cfg.env
    if cfg.data.task == "ecom":
        from grpo.environments.ecom import ECOM_ENVIRONMENTS

        factory = {name: ECOM_ENVIRONMENTS[name] for name in cfg.data.ecom_environments}
    elif e.active:
        factory = e.factories or e.factory or None
    else:
        return None
    environments = load_environments(factory, list(e.tools))
    settings = agent_settings(tokenizer, e.chat_template, e.max_turns, e.tool_timeout_s, e.max_calls_per_turn)
    log.info("agents: environments %s, tools %s, at most %d turns, chat template %s",
             sorted(str(name) for name in environments.factories), sorted(environments.tools), e.max_turns,
             "the model's" if settings.chat_template is None else "CHATML_TOOL_TEMPLATE")
    return Agents(environments, settings, rewarding.WeightedReward("env", e.reward_weight, env_reward),
                  e.success_threshold)


def curriculum_keys(cfg: Config) -> list[str]:
    """The curriculum's environments (e-commerce) or datasets (reasoning-gym)."""
    d = cfg.data
    return list(d.ecom_environments) if d.task == "ecom" else list(d.reasoning_gym_datasets)


def build_curriculum(cfg: Config) -> Curriculum | None:
    """RLVE's curriculum over the task's environments or datasets (env.curriculum), or None."""
    e = cfg.env
    if not e.curriculum:
        return None
    config = CurriculumConfig(min_level=0, max_level=e.curriculum_max_level, start_level=e.curriculum_start_level,
                              window=e.curriculum_window, promote_at=e.curriculum_promote_at,
                              demote_below=e.curriculum_demote_below, min_episodes=e.curriculum_min_episodes)
    return Curriculum({key: config for key in curriculum_keys(cfg)}, cfg.train.seed)


def gather_records(records: list[tuple[str, int, bool]], world: World) -> list[tuple[str, int, bool]]:
    """Every rank's (key, level, success) records of the step, in rank order (a collective)."""
    if world.size == 1:
        return list(records)
    gathered = [None] * world.size
    torch.distributed.all_gather_object(gathered, records)
    return [record for rank in gathered for record in rank]


def level_success(records: list[tuple[str, int, bool]]) -> dict[str, float]:
    """The step's success rate by environment (or dataset) and level."""
    played, won = Counter(), Counter()
    for key, level, success in records:
        played[key, level] += 1
        won[key, level] += success
    return {f"env/success/{key}/level_{level}": won[key, level] / n for (key, level), n in sorted(played.items())}


def update_curriculum(curriculum: Curriculum, records: list[tuple[str, int, bool]]) -> dict:
    """The step's records of every rank (`gather_records`, the same list on every rank) into the curriculum,
    so all ranks hold one state; returns its metrics and the moves made."""
    moves = curriculum.update(records)
    for env, old, new in moves:
        log.info("curriculum: %s moves from level %d to %d", env, old, new)
    return {**curriculum.metrics(), "curriculum/moves_this_step": float(len(moves))}
