"""Verifiable reward functions, chosen by name: `rewards.get("gsm8k_correctness")`.

Every reward has TRL's signature `fn(completions, **columns) -> list[float | None]`
(see `rewards.registry`); `None` marks a row the reward does not apply to.
"""

from rewards import code_execution, gsm8k, keywords, majority_vote, math_answer, multihop, reasoning_gym, tool_calls
from rewards.code_execution import code_execution_reward
from rewards.gsm8k import correctness_reward, format_reward
from rewards.keywords import keywords_reward
from rewards.math_answer import math_verify_reward
from rewards.multihop import multihop_answer, multihop_rubric
from rewards.reasoning_gym import reasoning_gym_reward
from rewards.registry import get, names, register

__all__ = [
    "code_execution",
    "code_execution_reward",
    "correctness_reward",
    "format_reward",
    "get",
    "gsm8k",
    "keywords",
    "keywords_reward",
    "majority_vote",
    "math_answer",
    "math_verify_reward",
    "multihop",
    "multihop_answer",
    "multihop_rubric",
    "names",
    "reasoning_gym",
    "tool_calls",
    "reasoning_gym_reward",
    "register",
]
