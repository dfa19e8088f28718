"""A turn sampled on the carried context (grpo/rollout/generation.py `generate_turn(context=...)`, the agent
rollout's later turns) against the same turn sampled from each row's whole conversation encoded anew: the
same tokens and the same sampler log-probs, over three turns with rows leaving, unequal sampled and tool
lengths (padding inside the carried context), on each decode path."""

import pytest
import torch

from grpo.rollout import SamplingParams, generate
from grpo.rollout.generation import generate_turn
from grpo.runtime.model import load_model_and_tokenizer

GROUP = 3


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


def sampled_ids(batch) -> list[list[int]]:
    lengths = batch.completion_mask.sum(1).long().tolist()
    return [ids[:n] for ids, n in zip(batch.completion_ids.tolist(), lengths)]


@pytest.mark.parametrize("share_prompt_kv, compiled", [
    pytest.param(True, False, id="shared-prefix"),
    pytest.param(False, False, id="repeated-cache"),
    pytest.param(True, True, id="compiled"),
])
def test_a_turn_on_the_carried_context_samples_what_the_whole_context_does(model_and_tokenizer, share_prompt_kv,
                                                                           compiled):
    model, tokenizer = model_and_tokenizer
    prompts = [[65 + i % 50 for i in range(14)], [74 + i % 50 for i in range(4)]]  # a padded batch
    params = SamplingParams(temperature=1.0, max_new_tokens=9)
    options = {"share_prompt_kv": share_prompt_kv, "compiled": compiled}
    first, context = generate_turn(model, tokenizer, prompts, GROUP, params, [5, 6], **options)
    rows = list(range(len(prompts) * GROUP))
    conversations = [list(prompts[r // GROUP]) for r in rows]
    index = {r: r // GROUP for r in rows}  # each row's place in the context cache
    turn = sampled_ids(first)
    for step, active in enumerate([[0, 2, 3, 4, 5], [5, 0, 3]]):  # rows leave; the order is the caller's
        position = {r: k for k, r in enumerate(rows)}
        new = [turn[position[r]] + [80 + r] * (1 + 2 * r) for r in active]  # its last turn, a tool result
        conversations = [c + n for c, n in zip([conversations[rows.index(r)] for r in active], new)]
        carried = context.rows(torch.tensor([index[r] for r in active]))
        seeds = [100 * step + r for r in active]
        got, context = generate_turn(model, tokenizer, new, 1, params, seeds, context=carried, **options)
        whole = generate(model, tokenizer, conversations, 1, params, seeds, **options)
        assert torch.equal(got.completion_ids, whole.completion_ids) and got.texts == whole.texts
        mask = got.completion_mask.bool()
        torch.testing.assert_close(got.sampler_logprobs[mask], whole.sampler_logprobs[mask], atol=1e-5, rtol=1e-5)
        assert context.mask.sum(1).tolist() == [len(c) for c in conversations]  # padding inside, not counted
        rows, index, turn = active, {r: k for k, r in enumerate(active)}, sampled_ids(got)


def test_a_carried_context_needs_one_row_per_prompt_each_with_new_ids(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(max_new_tokens=2)
    _, context = generate_turn(model, tokenizer, [[65, 66], [67]], 1, params, [0, 1])
    with pytest.raises(ValueError, match="one row per prompt"):
        generate_turn(model, tokenizer, [[70], []], 1, params, [0, 1], context=context)
    with pytest.raises(ValueError, match="one row per prompt"):
        generate_turn(model, tokenizer, [[70], [71]], 2, params, [0, 1], context=context)
