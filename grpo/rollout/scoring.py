"""Calling the reward functions of a recipe on a batch of completions.

Rewards are plugins (`rewards.get(name, **options)`), user-written ones included. A reward
that raises, returns the wrong number of scores or a non-finite score must not kill a
training run that has been going for hours: the failure is logged with the reward's name
and those rows count as "not applicable" (NaN here, like a returned None).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

import rewards as reward_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightedReward:
    name: str
    weight: float
    fn: Callable[..., list]


def build_rewards(specs) -> list[WeightedReward]:
    """Resolve recipe reward specs (name, weight, options) through the registry, failing early."""
    return [WeightedReward(s.name, s.weight, reward_registry.get(s.name, **s.options)) for s in specs]


def expand_columns(rows: list[dict], group_size: int) -> dict[str, list]:
    """Dataset columns repeated for each of a prompt's G completions: {column: [B values]}."""
    columns = {key: [row.get(key) for row in rows for _ in range(group_size)] for key in rows[0]}
    columns["prompts"] = columns.pop("prompt", [None] * len(rows) * group_size)
    return columns


def _call_one(reward: WeightedReward, completions: list[str], columns: dict) -> list[float]:
    try:
        scores = reward.fn(completions, **columns)
    except Exception:  # noqa: BLE001 - a plugin's bug must not end the run; it is logged loudly
        log.exception("reward %r raised; its scores for this batch are skipped", reward.name)
        return [math.nan] * len(completions)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(completions):
        log.error("reward %r returned %r for %d completions; skipped",
                  reward.name, type(scores).__name__, len(completions))
        return [math.nan] * len(completions)
    out = []
    for s in scores:
        value = math.nan if s is None else float(s)
        out.append(value if math.isfinite(value) else math.nan)
    return out


def score(rewards: list[WeightedReward], completions: list[str], columns: dict) -> torch.Tensor:
    """Per-reward scores, (B, K) float with NaN where a reward does not apply."""
    return torch.tensor([_call_one(r, completions, columns) for r in rewards]).T.reshape(
        len(completions), len(rewards)
    )
