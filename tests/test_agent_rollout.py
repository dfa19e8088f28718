"""The multi-turn rollout (grpo/rollout/agent.py) on the tiny model: token in, token out, only the model's
tokens train, every row advances turn by turn, and the episodes' ends (an answer, the turn limit, the budget).

A random tiny model never writes a tool call, so the turns here are scripted: `ScriptedSampler` stands in
for `generate_turn` and emits each row's next scripted turn, with the sampler's log-probs of those tokens
computed by the real model on the row's real context, turn by turn. Re-scoring the stored multi-turn
sequence in one pass must then give the same log-probs: the ids trained on are the ids the model was
conditioned on, nothing re-tokenized, the positions continuous. The end-to-end tests at the bottom run the
real sampler (tests/test_agents_train.py trains with it)."""

from dataclasses import replace

import pytest
import torch

from grpo.environments import load_environments, start_episodes
from grpo.environments.tool_calls import AssistantTurn, ToolCall
from grpo.rollout import agent
from grpo.rollout.batch import RolloutBatch, left_pad
from grpo.rollout.logprobs import completion_logprobs
from grpo.rollout.sampling import SamplingParams
from grpo.runtime.model import load_model_and_tokenizer

ENV = "tests.helpers.trl_style_env:NumberGuessEnv"
TOOLS = ["tests.helpers.trl_style_env:add"]
CALL = '<tool_call>\n{{"name": "guess", "arguments": {{"number": {n}}}}}\n</tool_call>'


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


class IdsContext:
    """Stands in for the ContextCache the real sampler returns: the ids each row's context holds, so the
    scripted sampler sees whether the rollout passes a row's new ids and its carried context in order."""

    def __init__(self, ids: list[list[int]]):
        self.ids = ids

    def rows(self, index: torch.Tensor) -> "IdsContext":
        return IdsContext([self.ids[i] for i in index.tolist()])


class ScriptedSampler:
    """`generate_turn`'s signature; each call emits every active row's next scripted turn (text + end of
    turn), in the order the rollout passes the rows, with the real model's log-probs of those tokens in the
    row's whole context (the carried context's ids followed by the ids passed)."""

    def __init__(self, model, tokenizer, turns_by_row: list[list[str]], end_id: int):
        self.model, self.tokenizer, self.end_id = model, tokenizer, end_id
        self.turns = [list(t) for t in turns_by_row]  # consumed front to back
        self.calls = []  # (number of contexts, group size) of each call: the batching

    def __call__(self, model, tokenizer, new_ids, group_size, params, seeds, context=None, compiled=False,
                 abort=None):
        self.calls.append((len(new_ids), group_size))
        contexts = new_ids if context is None else [old + new for old, new in zip(context.ids, new_ids)]
        rows = [r for r in range(len(self.turns)) if self.turns[r]] if group_size == 1 else range(len(self.turns))
        rows = list(rows)[: len(contexts) * group_size]
        ids = [self.tokenizer.encode(self.turns[r].pop(0), add_special_tokens=False) + [self.end_id] for r in rows]
        width = max(len(i) for i in ids)
        completion = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
        mask = (torch.arange(width) < torch.tensor([len(i) for i in ids]).unsqueeze(1)).float()
        prompt_ids, prompt_mask = left_pad(contexts, tokenizer.pad_token_id)
        batch = RolloutBatch(prompt_ids, prompt_mask, completion, mask, torch.zeros(len(ids), dtype=torch.bool),
                             [""] * len(ids), group_size, torch.zeros(mask.shape), torch.zeros(mask.shape))
        with torch.no_grad():  # the model's own log-probs of the scripted tokens, in this turn's context
            batch.sampler_logprobs = completion_logprobs(self.model, batch, 1.0, shared_prefix=False) * mask
        return batch, IdsContext(contexts)


def play(tiny, monkeypatch, turns_by_row, rows, group_size=2, max_turns=4, budget=400):
    model, tokenizer = tiny
    settings = agent.agent_settings(tokenizer, "auto", max_turns, timeout_s=5.0, max_calls_per_turn=4)
    sampler = ScriptedSampler(model, tokenizer, turns_by_row, settings.end_id)
    monkeypatch.setattr(agent, "generate_turn", sampler)
    episodes = start_episodes(load_environments(ENV, TOOLS), [r for r in rows for _ in range(group_size)])
    played = agent.run_episodes(model, tokenizer, episodes, group_size, SamplingParams(max_new_tokens=budget),
                                seeds=list(range(len(rows))), settings=settings)
    return played, sampler, settings


TWO_ROWS = [
    [CALL.format(n=5), CALL.format(n=7), "It is 7."],  # higher, correct, then the answer: 3 turns
    ["I think it is 3."],  # an answer at once: 1 turn
]


def test_rescoring_the_stored_sequence_gives_the_samplers_log_probs(tiny, monkeypatch):
    played, _, _ = play(tiny, monkeypatch, TWO_ROWS, [{"prompt": [{"role": "user", "content": "Guess."}], "secret": 7}],
                        group_size=2)
    batch = played.batch
    with torch.no_grad():
        rescored = completion_logprobs(tiny[0], batch, 1.0)
    sampled = batch.sampled_mask.bool()
    assert sampled.sum() > 0
    torch.testing.assert_close(rescored[sampled], batch.sampler_logprobs[sampled], atol=1e-5, rtol=1e-5)


def test_only_the_models_tokens_train_and_the_tool_results_are_in_the_sequence(tiny, monkeypatch):
    played, _, settings = play(tiny, monkeypatch, TWO_ROWS,
                               [{"prompt": [{"role": "user", "content": "Guess."}], "secret": 7}], group_size=2)
    tokenizer, batch = tiny[1], played.batch
    for row, turns in enumerate(TWO_ROWS):
        ids = batch.completion_ids[row][batch.completion_mask[row].bool()].tolist()
        sampled = batch.sampled_mask[row][batch.completion_mask[row].bool()].tolist()
        expected = [i for t in turns for i in tokenizer.encode(t, add_special_tokens=False) + [settings.end_id]]
        assert [i for i, s in zip(ids, sampled) if s] == expected  # exactly the sampled ids, in order
        appended = tokenizer.decode([i for i, s in zip(ids, sampled) if not s])
        if row == 0:  # the tool results as the template's messages, and the next assistant header
            assert "<tool_response>\nhigher\n</tool_response>" in appended
            assert "<tool_response>\ncorrect\n</tool_response>" in appended
            assert appended.count("<|im_start|>assistant") == 2
        else:
            assert appended == ""
    episodes = played.episodes
    assert [e.counts["turns"] for e in episodes] == [3, 1] and episodes[0].reward() == 1.0
    assert episodes[1].reward() == 0.0 and not batch.truncated.any()


def test_rows_advance_together_one_batched_decode_per_turn(tiny, monkeypatch):
    turns = [[CALL.format(n=5), "done"], ["done"], [CALL.format(n=1), CALL.format(n=2), "done"], ["done"]]
    rows = [{"prompt": [{"role": "user", "content": "Guess."}], "secret": 7}] * 2
    _, sampler, _ = play(tiny, monkeypatch, turns, rows, group_size=2)
    # turn 1: both prompts' groups in one call (G = 2); turn 2: the two rows still running; turn 3: one
    assert sampler.calls == [(2, 2), (2, 1), (1, 1)]


@pytest.mark.parametrize("max_turns, budget, turns, truncated", [
    pytest.param(2, 400, [CALL.format(n=5), CALL.format(n=6), "x"], True, id="turn-limit"),
    pytest.param(4, 60, [CALL.format(n=5), CALL.format(n=6), "x"], True, id="token-budget"),
    pytest.param(4, 400, ["an answer"], False, id="answer"),
])
def test_an_episode_ends_on_an_answer_the_turn_limit_or_the_budget(tiny, monkeypatch, max_turns, budget, turns,
                                                                   truncated):
    played, _, _ = play(tiny, monkeypatch, [turns], [{"prompt": [{"role": "user", "content": "Guess."}]}],
                        group_size=1, max_turns=max_turns, budget=budget)
    assert bool(played.batch.truncated[0]) is truncated
    assert played.batch.completion_mask.sum() <= budget


def test_the_real_sampler_runs_episodes_and_keeps_its_log_probs(tiny):
    """No script: the tiny model samples (it writes no call, so each episode is one turn); the sampler's
    log-probs of what it sampled equal the trainer's."""
    model, tokenizer = tiny
    settings = agent.agent_settings(tokenizer, "auto", 3, timeout_s=5.0, max_calls_per_turn=4)
    rows = [{"prompt": [{"role": "user", "content": "Guess."}], "secret": 3}] * 2
    episodes = start_episodes(load_environments(ENV, TOOLS), [r for r in rows for _ in range(2)])
    played = agent.run_episodes(model, tokenizer, episodes, 2, SamplingParams(max_new_tokens=12), [0, 1], settings)
    batch = played.batch
    with torch.no_grad():
        rescored = completion_logprobs(model, batch, 1.0)
    sampled = batch.sampled_mask.bool()
    torch.testing.assert_close(rescored[sampled], batch.sampler_logprobs[sampled], atol=1e-4, rtol=1e-4)
    assert len(played.conversations) == 4 and all(c[0]["role"] == "assistant" for c in played.conversations)


def test_the_real_sampler_on_the_carried_context_plays_what_encoding_whole_conversations_does(tiny, monkeypatch):
    """Several turns with the real sampler: every turn's text is read as a call (the tiny model writes none),
    so rows go on until they sample the end of turn (budget permitting). Carrying each row's context between
    turns gives the same episodes, ids and sampler log-probs as encoding every conversation whole."""
    model, tokenizer = tiny
    settings = agent.agent_settings(tokenizer, "auto", 3, timeout_s=5.0, max_calls_per_turn=4)
    settings = replace(settings, read=lambda text: AssistantTurn(text, (ToolCall("guess", {"number": 5}),)))
    rows = [{"prompt": [{"role": "user", "content": "Guess."}], "secret": 3},
            {"prompt": [{"role": "user", "content": "Guess again, now."}], "secret": 4}]

    def play_all():
        episodes = start_episodes(load_environments(ENV, TOOLS), [r for r in rows for _ in range(2)])
        played = agent.run_episodes(model, tokenizer, episodes, 2, SamplingParams(max_new_tokens=300), [0, 1],
                                    settings)
        return played, [e.counts["turns"] for e in episodes]

    carried, turns = play_all()
    assert max(turns) >= 3 and min(turns) == 1  # several turns, rows leaving: the carried path ran
    monkeypatch.setattr(agent._Carried, "rows", lambda self, active: None)  # every turn encodes it all
    whole, whole_turns = play_all()
    assert turns == whole_turns and torch.equal(carried.batch.completion_ids, whole.batch.completion_ids)
    sampled = carried.batch.sampled_mask.bool()
    torch.testing.assert_close(carried.batch.sampler_logprobs[sampled], whole.batch.sampler_logprobs[sampled],
                               atol=1e-5, rtol=1e-5)
