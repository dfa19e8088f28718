"""Agents in environments: G episodes per prompt, all rows advancing together, turn by turn.

Each turn is one batched decode of every row still running (`generate`, each row's conversation so far
as its prompt; the first turn shares each group's prompt, as single-turn sampling does). A turn ends at
the chat template's end-of-turn token (the sampler's EOS). Its text is read for tool calls in the
template's format (grpo/environments/tool_calls.py); the calls of every row run together in a thread
pool under a time limit (grpo/environments/execution.py), bad calls becoming error messages the model
reads; the tool messages and the next assistant header are rendered by the chat template and appended
as ids (grpo/environments/chat.py `continuation_ids`). An episode ends on a turn without a tool call,
after `max_turns` turns, or when its tokens reach the budget (`max_new_tokens` after the prompt).

Token in, token out: the ids the model sampled are kept as sampled and the template's ids appended as
they are, so the sequence trained on is exactly the one the model saw; only the sampled ids train
(`RolloutBatch.sampled_mask`). What a row's prompt holds beyond its group's common prefix (an
environment whose reset says something different to each episode of a group) leads its completion,
untrained.

A turn encodes only what each row gained since its last prompt pass (its previous turn's sampled ids and
the tool messages' ids): the keys/values of everything before are carried from that pass
(`ContextCache`, the first turn's kept once per group until the second turn picks each row's). The
sampled ids are encoded again in that pass rather than taken from the decode cache: the decode cache drops
finished rows as they end, and the prompt pass gives every row's keys/values in one batched product.
bench/agent.py measures the cost against single-turn decoding of the same tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from grpo.environments import (
    EnvironmentFailure, Episode, ToolExecutor, continuation_ids, end_of_turn, prompt_ids, tool_call_reader,
)
from grpo.environments.chat import CHATML_TOOL_TEMPLATE
from grpo.rollout.batch import RolloutBatch, left_pad
from grpo.rollout.generation import ContextCache, generate_turn
from grpo.rollout.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """How episodes run: the chat template (None: the tokenizer's own), the end-of-turn token, the
    tool-call reader, the executor, the turn limit."""

    chat_template: str | None
    end_id: int
    read: Callable
    executor: ToolExecutor
    max_turns: int


def agent_settings(tokenizer, choice: str, max_turns: int, timeout_s: float, max_calls_per_turn: int,
                   max_workers: int = 8) -> AgentSettings:
    """The settings of a recipe's `env` section. choice (env.chat_template): model | chatml_tools | auto (the
    model's template when it renders tool calls, else CHATML_TOOL_TEMPLATE for a ChatML tokenizer)."""
    template = CHATML_TOOL_TEMPLATE if choice == "chatml_tools" else None
    if choice == "auto":
        try:
            tool_call_reader(tokenizer, None)
        except ValueError:
            if "<|im_start|>" not in tokenizer.get_vocab():
                raise ValueError("env.chat_template=auto: the model's chat template renders no tool calls and the "
                                 "tokenizer is not ChatML; give the tokenizer a tool-calling chat template") from None
            template = CHATML_TOOL_TEMPLATE
    _, end_id = end_of_turn(tokenizer, template)
    return AgentSettings(template, end_id, tool_call_reader(tokenizer, template),
                         ToolExecutor(max_workers=max_workers, timeout_s=timeout_s,
                                      max_calls_per_turn=max_calls_per_turn), max_turns)


@dataclass
class _Row:
    """One episode's sequence as it grows: everything after its group's prompt."""

    context: list[int]  # the ids the model conditions on next (prompt and all turns so far)
    ids: list[int] = field(default_factory=list)  # after the group's prompt
    sampled: list[int] = field(default_factory=list)  # 1 where the model sampled the id
    logp: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    certainty: list[float] = field(default_factory=list)
    running: bool = True
    truncated: bool = False

    def append(self, ids: list[int], sampled: bool, logp=None, entropy=None, certainty=None) -> None:
        zeros = [0.0] * len(ids)
        self.ids += ids
        self.context += ids
        self.sampled += [int(sampled)] * len(ids)
        self.logp += logp if logp is not None else zeros
        self.entropy += entropy if entropy is not None else zeros
        self.certainty += certainty if certainty is not None else zeros


@dataclass
class AgentRollout:
    """The episodes of a batch of prompts: the batch to train on (prompt = each group's common prompt ids,
    completion = the rest of each row, `sampled_mask` on the model's ids), the episodes (or the failure of a
    row whose environment could not start: its row trains on nothing), and each row's conversation after
    the prompt (the completion the rewards read)."""

    batch: RolloutBatch
    episodes: list[Episode | EnvironmentFailure]
    conversations: list[list[dict]]


@dataclass
class _Carried:
    """The context cache of the last prompt pass: each row's index in it and how many of its context ids it
    covers."""

    cache: ContextCache | None = None
    index: dict[int, int] = field(default_factory=dict)
    covered: dict[int, int] = field(default_factory=dict)

    def rows(self, rows: list[int]) -> ContextCache | None:
        """The context of `rows`, in that order (None: nothing carried, encode whole contexts)."""
        if self.cache is None or any(r not in self.index for r in rows):
            return None
        return self.cache.rows(torch.tensor([self.index[r] for r in rows]))


def turn_seed(seed: int, slot: int, turn: int) -> int:
    """The sampling seed of a row's turn after the first (the first uses its prompt's seed and slot)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{slot}/{turn}".encode(), digest_size=8).digest(), "little") >> 1


def _common_prefix(rows: list[list[int]]) -> int:
    length = min(len(r) for r in rows)
    for i in range(length):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return length


def run_episodes(policy, tokenizer, episodes: list[Episode | EnvironmentFailure], group_size: int,
                 params: SamplingParams, seeds: list[int], settings: AgentSettings, compiled: bool = False,
                 abort=None) -> AgentRollout:
    """Run one episode per row (B = prompts x group_size rows; seeds: one per prompt) to its end.

    params: the sampling; its max_new_tokens is each episode's budget of ids after the prompt (sampled and
    appended), its stop strings are not used (a turn ends at the end-of-turn token)."""
    g, budget, pad = group_size, params.max_new_tokens, tokenizer.pad_token_id
    tools = [e.schemas if isinstance(e, Episode) else None for e in episodes]
    prompts = [prompt_ids(tokenizer, e.messages, tools[r], settings.chat_template) if isinstance(e, Episode) else None
               for r, e in enumerate(episodes)]
    group_prompts, rows = [], []
    for p in range(len(episodes) // g):
        members = [prompts[p * g + j] for j in range(g) if prompts[p * g + j] is not None]
        common = members[0][:_common_prefix(members)] if members else [pad]
        group_prompts.append(common)
        for j in range(g):
            full = prompts[p * g + j]
            row = _Row(context=list(common))
            if full is None:  # no environment: nothing to run, nothing to train
                row.running = False
                row.append([pad], sampled=False)
            elif len(full) > len(common):  # this episode's own prompt tail: context, not trained
                row.append(full[len(common):], sampled=False)
            rows.append(row)
    turn_params = replace(params, stop_strings=())
    carried = _Carried()
    for turn in range(settings.max_turns):
        active = [r for r, row in enumerate(rows) if row.running]
        if not active:
            break
        room = max(budget - len(rows[r].ids) for r in active)
        step_params = replace(turn_params, max_new_tokens=max(room, 1))
        whole_groups = turn == 0 and all(not rows[r].ids for r in range(len(rows)))
        if whole_groups:
            sampled, context = generate_turn(policy, tokenizer, group_prompts, g, step_params, seeds,
                                             compiled=compiled, abort=abort)
            order = list(range(len(rows)))
            carried = _Carried(context, {r: r // g for r in order}, {r: len(rows[r].context) for r in order})
        else:
            past = carried.rows(active)
            new = [rows[r].context[carried.covered[r]:] if past is not None else rows[r].context for r in active]
            turn_seeds = [turn_seed(seeds[r // g], r % g, turn) for r in active]
            sampled, context = generate_turn(policy, tokenizer, new, 1, step_params, turn_seeds, context=past,
                                             compiled=compiled, abort=abort)
            order = active
            carried = _Carried(context, {r: k for k, r in enumerate(order)}, {r: len(rows[r].context) for r in order})
        pending = _take_turns(rows, episodes, sampled, order, budget, settings, tokenizer)
        _run_tools(rows, episodes, pending, settings, tokenizer, turn, budget)
    for row in rows:
        if row.running:  # the turn limit: its last turn's calls ran, the model does not see their results
            row.running, row.truncated = False, True
    return AgentRollout(_batch(rows, group_prompts, g, pad, tokenizer), episodes,
                        [e.messages[len(prompt_messages(e)):] if isinstance(e, Episode) else [] for e in episodes])


def prompt_messages(episode: Episode) -> list[dict]:
    """The messages of the prompt (before the first assistant turn)."""
    for i, message in enumerate(episode.messages):
        if message.get("role") == "assistant":
            return episode.messages[:i]
    return episode.messages


def _take_turns(rows, episodes, sampled: RolloutBatch, order: list[int], budget: int, settings, tokenizer):
    """Each row's sampled turn appended (cut at its own budget); returns [(row, AssistantTurn)] of the rows
    whose turn called tools. A turn without a call ends its episode."""
    lengths = sampled.completion_mask.sum(1).long().tolist()
    ids, logp = sampled.completion_ids.tolist(), sampled.sampler_logprobs.tolist()
    entropy, certainty = sampled.token_entropy.tolist(), sampled.token_certainty.tolist()
    pending = []
    for k, r in enumerate(order):
        row, episode = rows[r], episodes[r]
        n = min(lengths[k], budget - len(row.ids))
        turn = ids[k][:n]
        row.append(turn, sampled=True, logp=logp[k][:n], entropy=entropy[k][:n], certainty=certainty[k][:n])
        ended = bool(turn) and turn[-1] == settings.end_id
        text = tokenizer.decode(turn[:-1] if ended else turn, skip_special_tokens=False)
        reply = settings.read(text)
        if not ended:  # the budget ran out inside the turn
            row.running, row.truncated = False, True
            episode.record_turn(reply, [])
        elif not reply.calls:  # an answer: the episode is over
            row.running = False
            episode.record_turn(reply, [])
        else:
            pending.append((r, reply))
    return pending


def _run_tools(rows, episodes, pending, settings: AgentSettings, tokenizer, turn: int, budget: int) -> None:
    """The pending turns' calls, all rows in one executor run; their results recorded and, unless this was the
    last turn or no room is left in the budget for another turn, appended as the template's ids (untrained)."""
    if not pending:
        return
    results = settings.executor.run([(episodes[r].toolbox, reply.calls) for r, reply in pending])
    for (r, reply), outcome in zip(pending, results):
        row, episode = rows[r], episodes[r]
        new = episode.record_turn(reply, outcome)
        if turn == settings.max_turns - 1:
            continue  # no turn follows: the calls ran (the environment's state counts), nothing is appended
        more = continuation_ids(tokenizer, episode.messages[: len(episode.messages) - len(new)], new,
                                episode.schemas, settings.chat_template)
        if len(row.ids) + len(more) >= budget:  # no room for another turn
            row.running, row.truncated = False, True
            continue
        row.append(more, sampled=False)


def _batch(rows: list[_Row], group_prompts: list[list[int]], group_size: int, pad: int, tokenizer) -> RolloutBatch:
    prompt_ids_, prompt_mask = left_pad(group_prompts, pad)
    width = max(len(row.ids) for row in rows)
    shape = (len(rows), width)

    def padded(values, fill, dtype):
        out = torch.full(shape, fill, dtype=dtype)
        for r, row in enumerate(rows):
            column = getattr(row, values)
            out[r, : len(column)] = torch.tensor(column, dtype=dtype)
        return out

    mask = torch.zeros(shape)
    for r, row in enumerate(rows):
        mask[r, : len(row.ids)] = 1.0
    sampled = padded("sampled", 0, torch.float32)
    # what the model wrote, every turn's end-of-turn token kept (malformed calls too, which the conversation's
    # assistant messages leave out)
    texts = [tokenizer.decode([t for t, s in zip(row.ids, row.sampled) if s], skip_special_tokens=False)
             for row in rows]
    return RolloutBatch(
        prompt_ids=prompt_ids_, prompt_mask=prompt_mask, completion_ids=padded("ids", pad, torch.long),
        completion_mask=mask, truncated=torch.tensor([row.truncated for row in rows]), texts=texts,
        group_size=group_size, token_entropy=padded("entropy", 0.0, torch.float32),
        token_certainty=padded("certainty", 0.0, torch.float32),
        sampler_logprobs=padded("logp", 0.0, torch.float32), sampled_mask=sampled,
    )
