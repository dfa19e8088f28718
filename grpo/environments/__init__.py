"""Environments an agent acts in over several turns: everything an episode needs except the model.

What a user writes is a class in TRL's environment convention (TRL 1.16's
`GRPOTrainer(environment_factory=...)`), so one class runs unchanged in both trainers:

    class Counter:
        def reset(self, start: int = 0, **row) -> str | None:   # row's fields; returns text for the prompt
            self.value = start
            return f"The counter is at {start}."
        def increment(self, step: int) -> str:                   # public method = a tool
            '''Add to the counter.

            Args:
                step: How much to add.
            '''
            self.value += step
            return str(self.value)
        def get_reward(self) -> float:                           # optional: the environment owns the reward
            return float(self.value == 10)

named in a recipe as "package.module:Counter" (several by name, each row's `environment` field picking
one), with stateless tool functions as "package.module:function".

The pieces, in the order a rollout uses them (modules):
- loading:    `load_environments(factory, tools) -> Environments` (imports, probes, tool schemas)
- episodes:   `start_episodes(environments, rows) -> [Episode | EnvironmentFailure]`, one per row:
              a fresh instance, `reset(**row)`, the prompt messages; `Episode.reward()` (get_reward),
              `Episode.success()`; `raise_if_all_failed`
- chat:       `prompt_ids`, `end_of_turn`, `continuation_ids` (token in, token out: the ids to append
              after a sampled turn), CHATML_TOOL_TEMPLATE / HERMES_RESPONSE_TEMPLATE
- tool_calls: `tool_call_reader(tokenizer) -> (text -> AssistantTurn)`: the calls in a finished turn
- execution:  `ToolExecutor(...).run([(toolbox, calls), ...]) -> [[ToolResult]]`: checked calls in
              threads under a time limit; bad calls become error messages, counted by outcome
- curriculum: `Curriculum`: RLVE's adaptive difficulty per environment, exact resume, rank-safe
- ecom:       an offline e-commerce gym after Ecom-RLVE (four environments, three-part reward)

One turn of the loop, for the rows still running (`read = tool_call_reader(tokenizer)`; the turn's
text is its sampled ids decoded with special tokens kept, without the end-of-turn token):

    turn = read(text)                                     # AssistantTurn; no calls: the episode ends
    results = executor.run([(episode.toolbox, turn.calls)])[0]      # all rows in one call, in practice
    new = episode.record_turn(turn, results)              # conversation and counts
    ids = continuation_ids(tokenizer, episode.messages[:-len(new)], new, episode.schemas)
    # the episode's sequence += sampled ids + ids (the ids get loss mask 0); then the next turn

This package imports no model code: it needs transformers' chat-template utilities and the standard
library (grpo.training, grpo.rollout and train.py use it, never the reverse).
"""

from grpo.environments.chat import (
    CHATML_TOOL_TEMPLATE, HERMES_RESPONSE_TEMPLATE, continuation_ids, end_of_turn, prompt_ids, render_ids,
)
from grpo.environments.curriculum import Curriculum, CurriculumConfig, episode_success
from grpo.environments.episodes import Episode, initial_messages, raise_if_all_failed, start_episodes
from grpo.environments.execution import OUTCOMES, ToolExecutor, ToolResult, Toolbox, check_arguments, count_outcomes
from grpo.environments.loading import (
    ENVIRONMENT_FIELD, EnvironmentFailure, Environments, load_environments, load_object, tool_methods, tool_schema,
)
from grpo.environments.tool_calls import AssistantTurn, ToolCall, parse_hermes, tool_call_reader

__all__ = [
    "CHATML_TOOL_TEMPLATE", "ENVIRONMENT_FIELD", "HERMES_RESPONSE_TEMPLATE", "OUTCOMES", "AssistantTurn", "Curriculum",
    "CurriculumConfig", "Environments", "EnvironmentFailure", "Episode", "ToolCall", "ToolExecutor", "ToolResult",
    "Toolbox", "check_arguments", "continuation_ids", "count_outcomes", "end_of_turn", "episode_success",
    "initial_messages", "load_environments", "load_object", "parse_hermes", "prompt_ids", "raise_if_all_failed",
    "render_ids", "start_episodes", "tool_call_reader", "tool_methods", "tool_schema",
]
