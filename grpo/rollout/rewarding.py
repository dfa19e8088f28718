"""Calling the reward functions of a recipe on a batch of completions.

Rewards are plugins (`rewards.get(name, **options)`), user-written ones included. A reward
that raises, returns the wrong number of scores or a non-finite score must not kill a
training run that has been going for hours: the failure is logged with the reward's name
and those rows count as "not applicable" (NaN here, like a returned None). A failure of the
reward's machinery (RewardInfrastructureError, e.g. a sandbox that cannot isolate or whose
judge crashed) is different: scores would mean nothing, so it stops the run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

import rewards as reward_registry
from grpo.runtime.config import ConfigError
from rewards.registry import RewardInfrastructureError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightedReward:
    name: str
    weight: float
    fn: Callable[..., list]


def build_rewards(specs) -> list[WeightedReward]:
    """Resolve recipe reward specs (name, weight, options) through the registry, failing early."""
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(WeightedReward(spec.name, spec.weight, reward_registry.get(spec.name, **spec.options)))
        except ValueError as err:  # an unknown name or option, or an option value the reward refuses
            raise ConfigError(f"rewards[{i}]: {err}") from None
    return out


def expand_columns(rows: list[dict], group_size: int) -> dict[str, list]:
    """Dataset columns repeated for each of a prompt's G completions: {column: [B values]}."""
    columns = {key: [row.get(key) for row in rows for _ in range(group_size)] for key in rows[0]}
    columns["prompts"] = columns.pop("prompt", [None] * len(rows) * group_size)
    return columns


def _call_one(reward: WeightedReward, completions: list[str], columns: dict) -> list[float]:
    try:
        scores = reward.fn(completions, **columns)
    except RewardInfrastructureError:
        raise  # the reward's machinery failed (e.g. its sandbox): scores would mean nothing, so stop
    except Exception:  # noqa: BLE001 - a plugin's bug must not end the run; it is logged loudly
        log.exception("reward %r raised; its rewards for this batch are skipped", reward.name)
        return [math.nan] * len(completions)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
        log.error("reward %r returned %r for %d completions; skipped",
                  reward.name, type(scores).__name__, len(completions))
        return [math.nan] * len(completions)
    out, bad = [], 0
    for s in scores:
        if s is None:  # not applicable to this row
            out.append(math.nan)
            continue
        try:
            value = float(s)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            bad += 1
            value = math.nan
        out.append(value)
    if bad:
        log.error("reward %r returned %d score(s) that are not finite numbers; those rows count as not "
                  "applicable", reward.name, bad)
    return out


def reward_matrix(rewards: list[WeightedReward], completions: list[str], columns: dict) -> torch.Tensor:
    """Each reward of each completion, (B, K) float with NaN where a reward does not apply."""
    return torch.tensor([_call_one(r, completions, columns) for r in rewards]).T.reshape(
        len(completions), len(rewards)
    )
