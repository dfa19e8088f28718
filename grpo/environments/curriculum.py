"""Adaptive difficulty per environment (RLVE, arXiv 2511.07317), with an optional way down.

Each environment keeps a range of levels [low, high]; an episode's level is drawn uniformly from it.
The decision reads only the episodes played at the top level `high`, since `high` last moved or was
last checked:
- once `min_episodes` of them are in (RLVE's tau_num), their success rate is checked;
- up: rate >= promote_at (RLVE's tau_acc) and high < max_level -> high += 1;
- down (our addition, off unless demote_below is set): rate < demote_below and high > min_level ->
  high -= 1; RLVE never moves down, but a run whose policy collapses at its top level otherwise keeps
  training on problems it fails;
- either way the count restarts, so each decision reads the latest `min_episodes` episodes at `high`.
low follows high: low = max(min_level, high - window + 1) (RLVE's sliding window d_delta), so the
range always holds the `window` hardest levels reached (fewer near min_level).

Determinism and ranks: `sample_level(env, step, row)` is a pure function of (seed, env, step, row, the
range), hashed (no global RNG, no counter), so every rank draws the same level for a global row index.
`update(records)` is deterministic in the order of its records. With several ranks, gather every rank's
(env, level, success) records each step, in rank order, and call `update` with the same list on every
rank: all ranks then hold the same state. `state_dict()` / `load_state_dict()` save and restore it whole,
so a resumed run draws the same levels as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class CurriculumConfig:
    """One environment's curriculum (every field is a proposed recipe key under env.curriculum)."""

    min_level: int = 0
    max_level: int = 8
    start_level: int = 0  # the first `high`
    window: int = 4  # levels sampled at once (RLVE d_delta)
    promote_at: float = 0.9  # success rate at `high` that moves the range up (RLVE tau_acc)
    demote_below: float | None = None  # success rate at `high` that moves it down; None: never (RLVE)
    min_episodes: int = 16  # episodes at `high` read per decision (RLVE tau_num)

    def __post_init__(self):
        for key in ("min_level", "max_level", "start_level", "window", "min_episodes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"env.curriculum.{key}={value!r} must be an integer")
        if not self.min_level <= self.start_level <= self.max_level:
            raise ValueError(f"env.curriculum needs min_level <= start_level <= max_level, got {self.min_level}, "
                             f"{self.start_level}, {self.max_level}")
        if self.window < 1 or self.min_episodes < 1:
            raise ValueError(f"env.curriculum.window={self.window} and min_episodes={self.min_episodes} must be >= 1")
        if not 0.0 < self.promote_at <= 1.0:
            raise ValueError(f"env.curriculum.promote_at={self.promote_at!r} must be in (0, 1]")
        if self.demote_below is not None and not 0.0 <= self.demote_below < self.promote_at:
            raise ValueError(f"env.curriculum.demote_below={self.demote_below!r} must be in [0, promote_at) or None "
                             f"(never move down)")


@dataclass
class _State:
    high: int
    top_episodes: int = 0  # at `high`, since the last decision
    top_successes: int = 0
    episodes: dict[int, int] | None = None  # level -> all episodes recorded (for metrics)
    successes: dict[int, int] | None = None
    moves: int = 0


class Curriculum:
    """Per-environment difficulty ranges, moved by the policy's success (see the module docstring)."""

    def __init__(self, configs: Mapping[str, CurriculumConfig], seed: int):
        if not configs:
            raise ValueError("a curriculum needs at least one environment")
        self.configs = dict(configs)
        self.seed = seed
        self._states = {name: _State(config.start_level, episodes={}, successes={})
                        for name, config in self.configs.items()}

    def _state(self, env: str) -> _State:
        if env not in self._states:
            raise ValueError(f"the curriculum has no environment {env!r}; it has {sorted(self._states)}")
        return self._states[env]

    def level_range(self, env: str) -> tuple[int, int]:
        """(low, high), inclusive."""
        config, high = self.configs[env], self._state(env).high
        return max(config.min_level, high - config.window + 1), high

    def sample_level(self, env: str, step: int, row: int) -> int:
        """The level of global row `row` at training step `step`: uniform over the range, from a hash."""
        low, high = self.level_range(env)
        digest = hashlib.blake2b(f"{self.seed}/{env}/{step}/{row}".encode(), digest_size=8).digest()
        return low + int.from_bytes(digest, "little") % (high - low + 1)

    def update(self, records: Iterable[tuple[str, int, bool]]) -> list[tuple[str, int, int]]:
        """Record finished episodes (env, level, success), in order; returns the moves made, as
        (env, old high, new high)."""
        moves = []
        for env, level, success in records:
            state, config = self._state(env), self.configs[env]
            if isinstance(level, bool) or not isinstance(level, int) or not config.min_level <= level <= config.max_level:
                raise ValueError(f"record ({env!r}, {level!r}, {success!r}): level must be an integer in "
                                 f"[{config.min_level}, {config.max_level}]")
            if not isinstance(success, bool):
                raise ValueError(f"record ({env!r}, {level!r}, {success!r}): success must be a bool")
            state.episodes[level] = state.episodes.get(level, 0) + 1
            state.successes[level] = state.successes.get(level, 0) + success
            if level != state.high:
                continue
            state.top_episodes += 1
            state.top_successes += success
            if state.top_episodes < config.min_episodes:
                continue
            rate = state.top_successes / state.top_episodes
            old = state.high
            if rate >= config.promote_at and state.high < config.max_level:
                state.high += 1
            elif config.demote_below is not None and rate < config.demote_below and state.high > config.min_level:
                state.high -= 1
            state.top_episodes = state.top_successes = 0
            if state.high != old:
                state.moves += 1
                moves.append((env, old, state.high))
        return moves

    def metrics(self) -> dict[str, float]:
        """Per environment: the range, the success so far at `high`, and the success rate per level played."""
        out = {}
        for env, state in self._states.items():
            low, high = self.level_range(env)
            prefix = f"curriculum/{env}"
            out[f"{prefix}/low"] = float(low)
            out[f"{prefix}/high"] = float(high)
            out[f"{prefix}/moves"] = float(state.moves)
            out[f"{prefix}/top_episodes"] = float(state.top_episodes)
            if state.top_episodes:
                out[f"{prefix}/top_success_rate"] = state.top_successes / state.top_episodes
            for level in sorted(state.episodes):
                out[f"{prefix}/success_rate_level_{level}"] = state.successes[level] / state.episodes[level]
        return out

    def state_dict(self) -> dict:
        """Everything that decides later levels (plain Python, JSON-safe)."""
        return {
            "seed": self.seed,
            "environments": {
                env: {"high": s.high, "top_episodes": s.top_episodes, "top_successes": s.top_successes,
                      "episodes": {str(k): v for k, v in s.episodes.items()},
                      "successes": {str(k): v for k, v in s.successes.items()}, "moves": s.moves}
                for env, s in self._states.items()
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        saved = state["environments"]
        if set(saved) != set(self._states):
            raise ValueError(f"the checkpoint's curriculum has environments {sorted(saved)}, the recipe "
                             f"{sorted(self._states)}; resume with the same environments")
        if state["seed"] != self.seed:
            raise ValueError(f"the checkpoint's curriculum seed is {state['seed']}, the recipe's {self.seed}; resume "
                             f"with the same seed")
        for env, s in saved.items():
            config = self.configs[env]
            if not config.min_level <= s["high"] <= config.max_level:
                raise ValueError(f"the checkpoint's level {s['high']} for {env!r} is outside the recipe's "
                                 f"[{config.min_level}, {config.max_level}]")
            self._states[env] = _State(
                s["high"], s["top_episodes"], s["top_successes"], {int(k): v for k, v in s["episodes"].items()},
                {int(k): v for k, v in s["successes"].items()}, s["moves"],
            )


def episode_success(reward: float | None, success: bool | None, threshold: float) -> bool:
    """Whether an episode counts as solved for the curriculum: the environment's own `success` when it has
    one (the e-commerce gym does), else its reward reaching `threshold`. A missing or NaN reward is an
    error: the curriculum must not read an unscored episode as a failure."""
    if success is not None:
        return bool(success)
    if reward is None or math.isnan(reward):
        raise ValueError(f"an episode with reward {reward!r} and no success flag cannot be counted by the curriculum")
    return reward >= threshold

