"""Agents: a format reward for tool calls, from the episode's counts.

For episodes in environments (grpo/rollout/agent.py), whose rows carry the counts `env_calls` and
`env_invalid` (calls the model wrote, and those that were malformed JSON, an unknown tool or wrong
arguments, grpo/environments/execution.py). A signal a small model can climb before it completes tasks
(the environment's own reward scores the task): 0 for an episode without a call, 0.5 for writing calls at
all, up to 1.0 as their share that ran grows. A row without the counts (a single-turn completion) is not
applicable: None.
"""

from rewards.registry import register


@register("tool_call_format")
def tool_call_format(completions, env_calls=None, env_invalid=None, **columns) -> list[float | None]:
    """0.5 + 0.5 x (calls - invalid) / calls per episode with a call; 0 without one; None without the counts."""
    if env_calls is None or env_invalid is None:
        return [None] * len(completions)
    scores = []
    for calls, invalid in zip(env_calls, env_invalid):
        if calls is None or invalid is None:
            scores.append(None)
        else:
            scores.append(0.5 + 0.5 * (calls - invalid) / calls if calls > 0 else 0.0)
    return scores
