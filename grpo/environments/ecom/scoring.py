"""The e-commerce reward, in three parts (after Ecom-RLVE), as one pure function.

    reward = task * (1 - EFFICIENCY_WEIGHT + EFFICIENCY_WEIGHT * efficiency)
             - min(HALLUCINATION_CAP, HALLUCINATION_PENALTY * hallucinated)

task: 1.0 when the goal holds in the world state at the end (the environment checks it), else 0.0.
efficiency: min(1, min_calls / calls): the fewest tool calls the task needs over the calls made; it
    only scales a completed task, so a failed episode cannot earn it by doing nothing.
hallucinated: distinct ids the agent passed to a tool that no tool result (nor the task text) showed
    it; penalised whether or not the task completed, so guessing an id never pays.
Range: [-HALLUCINATION_CAP, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

EFFICIENCY_WEIGHT = 0.2
HALLUCINATION_PENALTY = 0.25
HALLUCINATION_CAP = 0.5


@dataclass(frozen=True)
class RewardParts:
    task: float
    efficiency: float
    hallucinated: int
    total: float


def ecom_reward(completed: bool, calls: int, min_calls: int, hallucinated: int) -> RewardParts:
    """The three parts and their total (see the module docstring)."""
    if min_calls < 1 or calls < 0 or hallucinated < 0:
        raise ValueError(f"min_calls={min_calls} must be >= 1, calls={calls} and hallucinated={hallucinated} >= 0")
    task = 1.0 if completed else 0.0
    efficiency = min(1.0, min_calls / calls) if calls else 0.0
    penalty = min(HALLUCINATION_CAP, HALLUCINATION_PENALTY * hallucinated)
    total = task * (1.0 - EFFICIENCY_WEIGHT + EFFICIENCY_WEIGHT * efficiency) - penalty
    return RewardParts(task, efficiency, hallucinated, total)
