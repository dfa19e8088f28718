"""One episode per rollout row: its environment instance, its tools, its conversation, its counts.

`start_episodes(environments, rows)` builds each row's instance and calls `reset(**row)` (TRL's
convention: the row's fields as keyword arguments, minus `environment` when there are several); the
string `reset` returns is appended to the last prompt message, as TRL does. A factory or `reset` that
raises gives that row an `EnvironmentFailure` (with the environment's traceback) instead of an
Episode; `raise_if_all_failed` turns "every row failed" into one error, the sign of a broken
environment rather than a bad row.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from grpo.environments.execution import Toolbox, ToolResult, count_outcomes
from grpo.environments.loading import ENVIRONMENT_FIELD, EnvironmentFailure, Environments, tool_methods
from grpo.environments.tool_calls import AssistantTurn


@dataclass
class Episode:
    """A row's state outside the model.

    messages: the conversation as the chat template renders it: the prompt (with the reset observation),
        then each assistant turn and its tool messages.
    schemas: the tool schemas to render with (`apply_chat_template(tools=schemas)`).
    counts: tool-call outcomes so far (see `execution.count_outcomes`), and "turns".
    """

    row: int
    environment_name: str | None
    environment: object | None
    toolbox: Toolbox
    schemas: tuple[dict, ...]
    messages: list[dict]
    counts: Counter = field(default_factory=Counter)

    def record_turn(self, turn: AssistantTurn, results: Sequence[ToolResult]) -> list[dict]:
        """Append an assistant turn and its tool results to the conversation; returns the new tool
        messages (for `continuation_ids`)."""
        tool_messages = [result.message() for result in results]
        self.messages.append(turn.message())
        self.messages.extend(tool_messages)
        self.counts.update(count_outcomes(results))
        self.counts["turns"] += 1
        return tool_messages

    def reward(self) -> float | None:
        """The environment's `get_reward()`, or None when it defines none (the registry's rewards score the
        row instead). A `get_reward` that raises or returns no number is an EnvironmentFailure."""
        get_reward = getattr(type(self.environment), "get_reward", None) if self.environment is not None else None
        if get_reward is None:
            return None
        name = self.environment_name
        try:
            value = self.environment.get_reward()
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
        except Exception as error:  # noqa: BLE001  (the environment's own bug, reported with its traceback)
            raise EnvironmentFailure(f"environment {name!r}: get_reward raised {error!r} on row {self.row}",
                                     traceback=traceback.format_exc(), environment=name, row=self.row) from error
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise EnvironmentFailure(f"environment {name!r}: get_reward returned {value!r} on row {self.row}; it must "
                                     f"return a number", traceback="", environment=name, row=self.row)
        return float(value)

    def success(self) -> bool | None:
        """The environment's own `success` flag when it has one (a bool attribute or property), else None."""
        flag = getattr(self.environment, "success", None)
        return flag if isinstance(flag, bool) else None


def initial_messages(prompt, observation: str | None, row: int) -> list[dict]:
    """The prompt messages with `observation` appended to the last one's content (TRL's rule); a row
    without a prompt starts from one empty user message, as in TRL."""
    if prompt is None:
        prompt = [{"role": "user", "content": ""}]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise ValueError(
            f"row {row}: an environment row's prompt must be a list of chat messages ([{{'role': 'user', "
            f"'content': ...}}]), got {prompt!r:.80}; the chat template renders the tools, so the prompt cannot be "
            f"pre-rendered text"
        )
    messages = [dict(m) for m in prompt]
    if observation is not None:
        if not isinstance(observation, str):
            raise ValueError(f"row {row}: reset returned {observation!r:.80}; it must return a string or None")
        messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
    return messages


def _start(environments: Environments, row: Mapping, index: int) -> Episode:
    name = environments.environment_of(row, index)
    tools = dict(environments.tools)
    instance, observation = None, None
    if name in environments.factories:
        try:
            instance = environments.factories[name]()
            reset_kwargs = {k: v for k, v in row.items() if k != ENVIRONMENT_FIELD} if name is not None else dict(row)
            observation = instance.reset(**reset_kwargs)
        except Exception as error:  # noqa: BLE001  (the environment's own bug, reported with its traceback)
            stage = "reset" if instance is not None else "the factory"
            raise EnvironmentFailure(f"environment {name!r}: {stage} raised {error!r} on row {index}",
                                     traceback=traceback.format_exc(), environment=name, row=index) from error
        tools.update(tool_methods(instance))
    schemas = environments.schemas[name]
    return Episode(index, name, instance, Toolbox.of(tools, schemas), schemas,
                   initial_messages(row.get("prompt"), observation, index))


def start_episodes(environments: Environments, rows: Sequence[Mapping]) -> list[Episode | EnvironmentFailure]:
    """One Episode per row, or the EnvironmentFailure that row's environment raised (a row with no valid
    `environment` or prompt is a ValueError: the data's fault, not the environment's)."""
    episodes = []
    for index, row in enumerate(rows):
        try:
            episodes.append(_start(environments, row, index))
        except EnvironmentFailure as failure:
            episodes.append(failure)
    return episodes


def raise_if_all_failed(episodes: Sequence[Episode | EnvironmentFailure]) -> None:
    """Raise the first failure when no row could start: the environment is broken, not one row."""
    failures = [e for e in episodes if isinstance(e, EnvironmentFailure)]
    if episodes and len(failures) == len(episodes):
        first = failures[0]
        raise EnvironmentFailure(f"all {len(episodes)} rows failed to start; the first: {first.message}",
                                 traceback=first.traceback, environment=first.environment, row=first.row) from first
