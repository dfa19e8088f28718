"""Generation and log-prob passes on a tiny random model, checked against naive full forwards."""

import math

import pytest
import torch

from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from grpo.rollout import (
    SamplingParams, completion_logprobs, concat_batches, cut_at_stop, draw_by_inverse_cdf, generate, left_pad,
    next_token_stats, sample_tokens,
)
from grpo.rollout.sampling import counter_uniforms
from tests.helpers.host_reads import count


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


def test_top_p_keeps_only_the_nucleus():
    # probs .6, .3, .1: top_p .5 keeps only the first token (mass before it is 0 < .5)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(50, 1)
    uniforms = torch.rand(50, generator=torch.Generator().manual_seed(0))
    assert sample_tokens(logits, 1.0, 0.5, uniforms).eq(0).all()
    # top_p .7 keeps two tokens (mass before the 3rd is .9 >= .7)
    assert set(sample_tokens(logits, 1.0, 0.7, uniforms).tolist()) == {0, 1}


def test_inverse_cdf_draws_follow_the_weights_and_never_pick_a_zero_weight_token():
    # Unnormalized weights 1 : 0 : 6 : 3 -> probabilities .1, 0, .6, .3: the uniform's interval decides.
    weights = torch.tensor([[1.0, 0.0, 6.0, 3.0]]).repeat(5, 1)
    drawn = draw_by_inverse_cdf(weights, torch.tensor([0.0, 0.0999, 0.1, 0.6999, 0.7]))
    assert drawn.tolist() == [0, 0, 2, 2, 3]
    # Zero weight at both ends and a one-hot row.
    edges = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).repeat(500, 1)
    drawn = draw_by_inverse_cdf(edges, torch.rand(1000, generator=torch.Generator().manual_seed(1))).view(500, 2)
    assert set(drawn[:, 0].tolist()) == {1, 2} and drawn[:, 1].eq(3).all()


# Chi-square critical values at p = 0.001 (a correct sampler fails one run in a thousand):
# 3 degrees of freedom 16.27, 1 degree 10.83.
@pytest.mark.parametrize("top_p, expected", [
    pytest.param(1.0, [0.1, 0.2, 0.3, 0.4], id="full-distribution"),
    # top_p .65: the nucleus is {.4, .3} (mass before .2 is .7 >= .65), renormalized to 4/7, 3/7
    pytest.param(0.65, [0.0, 0.0, 3 / 7, 4 / 7], id="top-p-nucleus"),
])
def test_the_counter_based_sampler_draws_the_distribution(top_p, expected):
    n = 40_000
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).repeat(n, 1)
    # one row per (seed, slot, position) counter, as a generation spends them
    seeds, slots = torch.arange(n) // 64 + 12345, torch.arange(n) % 8
    uniforms = counter_uniforms(seeds, slots, position=3)
    counts = torch.bincount(sample_tokens(logits, 1.0, top_p, uniforms), minlength=4).double()
    expected = torch.tensor(expected, dtype=torch.float64) * n
    kept = expected > 0
    assert counts[~kept].sum() == 0  # tokens outside the nucleus are never drawn
    chi2 = (((counts - expected) ** 2)[kept] / expected[kept]).sum().item()
    assert chi2 < {4: 16.27, 2: 10.83}[int(kept.sum())], (counts.tolist(), chi2)


def test_counter_uniforms_depend_on_the_counters_alone():
    seeds, slots = torch.tensor([5, 5, 6, 2**40 + 5]), torch.tensor([0, 1, 0, 0])
    u = counter_uniforms(seeds, slots, position=7)
    assert len(set(u.tolist())) == 4  # another slot, seed or high seed bits: another number
    assert torch.equal(u[1:2], counter_uniforms(seeds[1:2], slots[1:2], position=7))  # alone or in a batch
    assert not torch.equal(u, counter_uniforms(seeds, slots, position=8))
    assert ((u >= 0) & (u < 1)).all()


def test_a_prompt_samples_the_same_completions_in_any_batch_and_sync_interval(tiny):
    # what lets a step split across ranks sample exactly what one process samples, and an
    # accelerator's less frequent looks change nothing
    model, tokenizer = tiny
    prompts = [tokenizer("abc")["input_ids"], tokenizer("Question: 3+4?")["input_ids"], tokenizer("x")["input_ids"]]
    params = SamplingParams(temperature=1.0, max_new_tokens=10, stop_strings=("\n",))
    every = generate(model, tokenizer, prompts, 3, params, seeds=[11, 22, 33])
    alone = generate(model, tokenizer, prompts[1:2], 3, params, seeds=[22])
    sparse = generate(model, tokenizer, prompts, 3, params, seeds=[11, 22, 33], sync_every=4)
    assert every.texts[3:6] == alone.texts
    assert torch.equal(every.completion_ids[3:6, : alone.completion_ids.shape[1]], alone.completion_ids)
    assert every.texts == sparse.texts and torch.equal(every.completion_mask, sparse.completion_mask)
    assert torch.equal(every.completion_ids, sparse.completion_ids)
    torch.testing.assert_close(every.token_entropy, sparse.token_entropy)


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
    entropy, certainty, logprob = next_token_stats(logits, temperature, torch.tensor([2]))
    assert entropy.item() == pytest.approx(expected_entropy, abs=1e-5)
    # token 2's probability: 3/6 at T = 1 (and greedy, the raw distribution), 9/14 at T = 0.5
    assert logprob.item() == pytest.approx(math.log(9 / 14 if temperature == 0.5 else 0.5), abs=1e-5)
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


# ---- stop strings on the device, against the per-token reference -------------------------------

def favour(tokenizer, texts: list[str], boost: float = 6.0):
    """A forward hook on the LM head that makes the bytes of `texts` likely, so stop strings occur."""
    ids = sorted({i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]})

    def hook(module, args, logits):
        bias = torch.zeros(logits.shape[-1])
        bias[ids] = boost
        return logits + bias
    return hook


def reference_generate(model, tokenizer, prompt, seed, group_size, params):
    """The textbook loop: full forwards, one row at a time, the tail decoded after every token."""
    window = max(len(s.encode()) for s in params.stop_strings) + 1
    eos = tokenizer.eos_token_id
    rows = []
    for slot in range(group_size):
        tokens = []
        for position in range(params.max_new_tokens):
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[:, -1]
            u = counter_uniforms(torch.tensor([seed]), torch.tensor([slot]), position)
            tokens.append(int(sample_tokens(logits, params.temperature, params.top_p, u)))
            tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
            if tokens[-1] == eos or any(s in tail for s in params.stop_strings):
                break
        rows.append(tokens)
    return rows


@pytest.mark.parametrize("stop_strings, likely", [
    pytest.param(("xyx", "yy\n"), "xy\n!", id="ascii"),
    pytest.param(("é!", "xé"), "é!", id="two-byte-utf8"),  # é is two byte tokens: its first alone is no "é"
    pytest.param(("y",), "xy\n", id="one-byte"),
])
def test_stop_strings_end_completions_exactly_where_the_per_token_test_would(tiny, stop_strings, likely):
    model, tokenizer = tiny
    handle = model.get_output_embeddings().register_forward_hook(favour(tokenizer, [likely]))
    try:
        params = SamplingParams(temperature=1.0, max_new_tokens=64, stop_strings=stop_strings)
        prompts = [tokenizer("Q: go")["input_ids"], tokenizer("x")["input_ids"]]
        batch = generate(model, tokenizer, prompts, 4, params, seeds=[3, 4])
        expected = [row for prompt, seed in zip(prompts, [3, 4])
                    for row in reference_generate(model, tokenizer, prompt, seed, 4, params)]
    finally:
        handle.remove()
    lengths = batch.completion_mask.sum(1).int().tolist()
    assert [batch.completion_ids[r, :n].tolist() for r, n in enumerate(lengths)] == expected
    # ~1/32 chance per position of a stop string in the ascii case: in 64 tokens nearly every row stops
    assert sum(not t for t in batch.truncated.tolist()) >= 2  # some rows did stop on a string
    for row, tokens in enumerate(expected):
        assert batch.texts[row] == cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings)


@pytest.mark.parametrize("prompts", [pytest.param(8, id="64-rows"), pytest.param(64, id="512-rows")])
def test_the_decode_loop_reads_the_device_a_few_times_per_step_and_decodes_each_row_at_most_3_times(
        tiny, prompts):
    model, tokenizer = tiny
    steps = 48
    params = SamplingParams(1.0, 1.0, steps, ("xyx", "yy\n"))
    token_lists = [tokenizer(f"Question: {i}+{i}?")["input_ids"] for i in range(prompts)]
    handle = model.get_output_embeddings().register_forward_hook(favour(tokenizer, ["xy\n"]))
    try:
        with count(tokenizer) as counted:
            batch = generate(model, tokenizer, token_lists, 8, params, seeds=list(range(prompts)))
    finally:
        handle.remove()
    rows = prompts * 8
    stopped = rows - int(batch.truncated.sum())
    assert stopped > rows // 4  # the stop strings did end many rows
    assert counted.reads / steps <= 4, counted.by_name
    assert counted.decodes / rows <= 3


def test_the_compiled_decode_step_gives_the_eager_tokens(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 1+1?")["input_ids"], tokenizer("Hi")["input_ids"]]
    for params, seeds in ((SamplingParams(temperature=0, max_new_tokens=8), None),
                          (SamplingParams(temperature=1.0, max_new_tokens=8, stop_strings=("\n",)), [5, 6])):
        eager = generate(model, tokenizer, prompts, 3, params, seeds)
        compiled = generate(model, tokenizer, prompts, 3, params, seeds, compiled=True)
        assert torch.equal(eager.completion_ids, compiled.completion_ids)
        assert eager.texts == compiled.texts
        torch.testing.assert_close(eager.token_entropy, compiled.token_entropy, atol=1e-4, rtol=1e-4)
