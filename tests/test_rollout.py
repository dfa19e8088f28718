"""Generation and log-prob passes on a tiny random model, checked against naive full forwards."""

import math

import pytest
import torch

from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from grpo.rollout import (
    SamplingParams, completion_logprobs, concat_batches, cut_at_stop, draw_by_inverse_cdf, generate, left_pad,
    next_token_stats, sample_tokens,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


def naive_greedy(model, prompt, steps):
    ids = list(prompt)
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_greedy_generation_matches_naive_decoding_with_padding(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 1+1?")["input_ids"], tokenizer("Hi")["input_ids"]]
    params = SamplingParams(temperature=0, max_new_tokens=6)
    batch = generate(model, tokenizer, prompts, group_size=2, params=params)
    assert batch.completion_ids.shape[0] == 4 and batch.prompt_ids.shape == (2, len(prompts[0]))
    for row in range(4):
        n = int(batch.completion_mask[row].sum())
        expected = naive_greedy(model, prompts[row // 2], n)
        assert batch.completion_ids[row, :n].tolist() == expected


def test_sampling_is_reproducible_and_rows_differ(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("abc")["input_ids"]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    a = generate(model, tokenizer, prompts, 4, params, seeds=[1])
    b = generate(model, tokenizer, prompts, 4, params, seeds=[1])
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert len({tuple(r) for r in a.completion_ids.tolist()}) > 1
    assert a.truncated.all()  # a random tiny model never says EOS in 8 tokens (prob ~ 8/259)


def test_a_prompts_completions_do_not_depend_on_the_other_prompts_in_the_batch(tiny):
    # what lets a step split across ranks sample exactly what one process samples
    model, tokenizer = tiny
    prompts = [tokenizer("abc")["input_ids"], tokenizer("Question: 3+4?")["input_ids"]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    both = generate(model, tokenizer, prompts, 3, params, seeds=[11, 22])
    alone = generate(model, tokenizer, prompts[1:], 3, params, seeds=[22])
    assert both.texts[3:] == alone.texts
    assert both.texts[:3] != alone.texts


def test_top_p_keeps_only_the_nucleus():
    # probs .6, .3, .1: top_p .5 keeps only the first token (mass before it is 0 < .5)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(50, 1)
    tokens = sample_tokens(logits, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert tokens.eq(0).all()
    # top_p .7 keeps two tokens (mass before the 3rd is .9 >= .7)
    tokens = sample_tokens(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}


def test_inverse_cdf_draws_follow_the_weights_and_never_pick_a_zero_weight_token():
    # Unnormalized weights 1 : 0 : 6 : 3 -> probabilities .1, 0, .6, .3.
    weights = torch.tensor([[1.0, 0.0, 6.0, 3.0]]).repeat(20_000, 1)
    counts = torch.bincount(draw_by_inverse_cdf(weights, torch.Generator().manual_seed(0)), minlength=4)
    assert counts[1] == 0
    # Binomial sd for n = 20,000: sqrt(n p (1 - p)) = 42 (p .1), 69 (p .6), 65 (p .3); allow 4 sd.
    for token, p, sd in [(0, 0.1, 42), (2, 0.6, 69), (3, 0.3, 65)]:
        assert abs(counts[token].item() - 20_000 * p) < 4 * sd
    # Zero weight at both ends and a one-hot row.
    edges = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).repeat(500, 1)
    drawn = draw_by_inverse_cdf(edges, torch.Generator().manual_seed(1)).view(500, 2)
    assert set(drawn[:, 0].tolist()) == {1, 2} and drawn[:, 1].eq(3).all()


def test_eos_ends_a_completion_and_stop_strings_cut_text(tiny):
    model, tokenizer = tiny
    # A hook on the head makes EOS the argmax: the completion is exactly one EOS token.
    def favour_eos(module, args, logits):
        return logits.index_add(-1, torch.tensor([tokenizer.eos_token_id]),
                                torch.full((*logits.shape[:-1], 1), 100.0))

    handle = model.get_output_embeddings().register_forward_hook(favour_eos)
    try:
        batch = generate(model, tokenizer, [[65, 66]], 2, SamplingParams(temperature=0, max_new_tokens=5))
    finally:
        handle.remove()
    assert batch.completion_mask.sum(1).tolist() == [1.0, 1.0]
    assert not batch.truncated.any() and batch.texts == ["", ""]
    assert cut_at_stop("12\n\nQuestion: next", ("\n\nQuestion:",)) == "12"


def test_shared_prefix_logprobs_equal_full_sequence_logprobs(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 2+2?")["input_ids"], tokenizer("Q")["input_ids"]]
    batch = generate(model, tokenizer, prompts, 3, SamplingParams(max_new_tokens=7), seeds=[0, 1])
    shared = completion_logprobs(model, batch)
    full = completion_logprobs(model, batch, shared_prefix=False)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], atol=1e-5, rtol=1e-5)
    # and both equal a naive forward of row 0's full sequence
    seq = prompts[0] + batch.completion_ids[0].tolist()
    logits = model(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
    p = len(prompts[0])
    naive = logits[p - 1 : -1].gather(1, batch.completion_ids[0].unsqueeze(1)).squeeze(1)
    n = int(batch.completion_mask[0].sum())
    torch.testing.assert_close(shared[0, :n], naive[:n], atol=1e-5, rtol=1e-5)


def test_shared_prefix_logprobs_of_one_token_completions(tiny):
    model, tokenizer = tiny
    batch = generate(model, tokenizer, [[65, 66, 67], [68]], 2, SamplingParams(max_new_tokens=1), seeds=[0, 1])
    assert batch.completion_ids.shape == (4, 1)
    shared = completion_logprobs(model, batch)
    torch.testing.assert_close(shared, completion_logprobs(model, batch, shared_prefix=False), atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_the_shared_prompt_pass(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    model = attach_lora(model, 4, 8, 0.0, ("q_proj", "v_proj"))
    for name, p in model.named_parameters():  # LoRA B starts at 0; make it non-zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    batch = generate(model, tokenizer, [[70, 71, 72, 73]], 2, SamplingParams(max_new_tokens=4), seeds=[0])
    grads = []
    for shared in (True, False):
        model.zero_grad()
        logp = completion_logprobs(model, batch, shared_prefix=shared)
        (logp * batch.completion_mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_prompts_slice_trims_padding(tiny):
    model, tokenizer = tiny
    batch = generate(model, tokenizer, [[65, 66, 67, 68], [65]], 2, SamplingParams(max_new_tokens=3), seeds=[0, 1])
    part = batch.prompts_slice(1, 2)
    assert part.prompt_ids.tolist() == [[65]] and part.completion_ids.shape[0] == 2
    assert part.texts == batch.texts[2:]


def test_rollout_records_sampling_entropy_and_self_certainty(tiny):
    model, tokenizer = tiny
    batch = generate(model, tokenizer, [[65, 66, 67]], 2, SamplingParams(max_new_tokens=3), seeds=[0])
    # the first token of both rows is drawn from the same distribution: recompute it by hand
    logits = model(input_ids=torch.tensor([[65, 66, 67]])).logits[0, -1]
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum()
    certainty = -logp.mean() - math.log(logits.shape[-1])  # KL(U || p) = -log V - mean log p
    torch.testing.assert_close(batch.token_entropy[:, 0], entropy.repeat(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.token_certainty[:, 0], certainty.repeat(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature, expected_entropy", [
    # logits ln [1, 2, 3]: p = [1, 2, 3] / 6; entropy = -sum p ln p = 1.011404.
    (1.0, 1.011404),
    # T = 0.5 squares the odds: p = [1, 4, 9] / 14; entropy = 0.830472.
    (0.5, 0.830472),
    (0.0, 1.011404),  # greedy: the entropy of the raw distribution
])
def test_next_token_stats_by_hand(temperature, expected_entropy):
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    entropy, certainty = next_token_stats(logits, temperature)
    assert entropy.item() == pytest.approx(expected_entropy, abs=1e-5)
    # Self-certainty uses the raw logits at any temperature: -ln 3 - mean ln([1, 2, 3] / 6) = 0.095894.
    assert certainty.item() == pytest.approx(0.095894, abs=1e-5)


def test_select_and_concat_batches_keep_groups_together(tiny):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=3)
    a = generate(model, tokenizer, [[65, 66, 67], [68]], 2, params, seeds=[0, 1])
    b = generate(model, tokenizer, [[69, 70]], 2, params, seeds=[2])
    both = concat_batches([a.select_groups([1]), b], tokenizer.pad_token_id)
    assert both.prompt_ids.tolist() == [[257, 257, 68], [257, 69, 70]]  # 257 = pad, on the left
    assert both.texts == a.texts[2:] + b.texts
    n = int(b.completion_mask[0].sum())
    assert both.completion_ids[2, :n].tolist() == b.completion_ids[0, :n].tolist()
