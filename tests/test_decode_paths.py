"""The decode paths a GPU uses, run on CPU: the compiled step over buffers the model keeps (same tokens
as the eager loop, buffers reused, no recompile for an evaluation's chunks), no device read per
decode step, and the stop-string tables built once per tokenizer."""

import pytest
import torch
from torch._dynamo.utils import counters

from grpo.rollout import SamplingParams, completion_logprobs, generate, stops
from grpo.runtime.model import load_model_and_tokenizer
from grpo.speedups import compiled_decode
from tests.helpers.host_reads import count


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    """A model of this module's own: compiled graphs and decode buffers are kept per model object."""
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


def prompt(start: int, length: int) -> list[int]:
    return [65 + (start + i) % 50 for i in range(length)]


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def buffer_address(model) -> int:
    (buffers,) = compiled_decode._BUFFERS[model].values()
    return buffers.keys[0].data_ptr()


def test_evaluation_chunks_share_one_compiled_step_and_its_buffers(model_and_tokenizer):
    """Greedy, G = 1, chunks of 3, 3 and 2 prompts as evaluation makes them: the last chunk is padded
    to the first's rows, a longer prompt (200 tokens, past the 128-position bucket) grows the prompt
    buffers without a recompile, and a horizon of 20 tokens instead of 8 shares the 64-position
    buffers. Every chunk gives the eager loop's tokens."""
    model, tokenizer = model_and_tokenizer
    chunks = [[prompt(0, 10), prompt(1, 7), prompt(2, 12)], [prompt(3, 9), prompt(4, 20), prompt(5, 3)],
              [prompt(6, 200), prompt(7, 5)], [prompt(8, 11)]]
    breaks = sum(counters["graph_break"].values())
    for index, chunk in enumerate(chunks):
        params = SamplingParams(temperature=0, max_new_tokens=20 if index == 3 else 8)
        compiled = generate(model, tokenizer, chunk, 1, params, compiled=True)
        eager = generate(model, tokenizer, chunk, 1, params)
        assert torch.equal(compiled.completion_ids, eager.completion_ids), f"chunk {index}"
        if index == 0:
            graphs, address = graphs_compiled(), buffer_address(model)
        elif index == 1:
            assert buffer_address(model) == address  # the same buffers: no new allocation, no new CUDA graph
    assert graphs_compiled() == graphs, "a chunk recompiled the decode step"
    assert sum(counters["graph_break"].values()) == breaks, dict(counters["graph_break"])
    (buffers,) = compiled_decode._BUFFERS[model].values()
    assert (buffers.num_prompts, buffers.prompt_len) == (3, 256)


def test_more_prompts_than_before_recompile_once(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(temperature=0, max_new_tokens=8)
    generate(model, tokenizer, [prompt(0, 5)], 1, params, compiled=True)
    graphs = graphs_compiled()
    many = [prompt(i, 6) for i in range(7)]
    compiled = generate(model, tokenizer, many, 1, params, compiled=True)
    assert torch.equal(compiled.completion_ids, generate(model, tokenizer, many, 1, params).completion_ids)
    assert graphs_compiled() == graphs + 1


def test_compiled_sampling_gives_the_eager_tokens_and_the_trainers_logprobs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [prompt(0, 14), prompt(9, 4)]  # a padded batch
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop_strings=("\n",))
    eager = generate(model, tokenizer, prompts, 3, params, seeds=[5, 6])
    for _ in range(2):  # the second rollout reuses the first one's buffers, filled anew
        compiled = generate(model, tokenizer, prompts, 3, params, seeds=[5, 6], compiled=True)
        assert torch.equal(compiled.completion_ids, eager.completion_ids) and compiled.texts == eager.texts
    mask = compiled.completion_mask.bool()
    trainer = completion_logprobs(model, compiled)
    torch.testing.assert_close(compiled.sampler_logprobs[mask], trainer[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compiled", [pytest.param(False, id="eager"), pytest.param(True, id="compiled")])
def test_decode_steps_read_nothing_from_the_device(model_and_tokenizer, compiled):
    """With the loop's looks out of the way (sync_every past the end), 8 and 40 decode steps read the
    device the same number of times: the steps themselves read nothing (no mask built per step)."""
    assert_decode_steps_read_nothing(*model_and_tokenizer, compiled)


def assert_decode_steps_read_nothing(model, tokenizer, compiled: bool) -> None:
    """8 and 40 decode steps with the loop's looks past the end read the device equally often (also the
    CUDA test's check, tests/test_cuda_decode.py)."""
    reads = {}
    for steps in (8, 40):
        params = SamplingParams(temperature=1.0, max_new_tokens=steps)
        generate(model, tokenizer, [prompt(0, 10), prompt(1, 7)], 3, params, seeds=[1, 2], compiled=compiled)
        with count(tokenizer) as counted:
            generate(model, tokenizer, [prompt(0, 10), prompt(1, 7)], 3, params, seeds=[1, 2], compiled=compiled,
                     sync_every=1000)
        reads[steps] = counted.reads
    assert reads[8] == reads[40], reads


def test_the_stop_matcher_is_built_once_per_tokenizer(tiny_model_dir, model_and_tokenizer, monkeypatch):
    model, _ = model_and_tokenizer
    _, tokenizer = load_model_and_tokenizer(tiny_model_dir)  # a tokenizer object no test has used
    built = []
    original = stops.StopMatcher.__init__

    def counted(self, *args, **kwargs):
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(stops.StopMatcher, "__init__", counted)
    params = SamplingParams(temperature=1.0, max_new_tokens=6, stop_strings=("\n\nQuestion:",))
    for seed in range(3):
        generate(model, tokenizer, [prompt(0, 5)], 2, params, seeds=[seed])
    assert len(built) == 1
    other = SamplingParams(temperature=1.0, max_new_tokens=6, stop_strings=("###",))
    generate(model, tokenizer, [prompt(0, 5)], 2, other, seeds=[0])
    assert len(built) == 2  # other stop strings: their own tables


def reference_tables(tokenizer, stop_strings):
    """The tables one token at a time: first K bytes left-aligned, last K right-aligned, -1 elsewhere."""
    encoded = [s.encode() for s in stop_strings]
    k = max(1, max(len(s) for s in encoded) - 1)
    vocab = stops.token_bytes(tokenizer)
    heads = torch.full((len(vocab), k), -1, dtype=torch.int16)
    tails = torch.full((len(vocab), k), -1, dtype=torch.int16)
    for i, b in enumerate(vocab):
        if b:
            heads[i, : min(k, len(b))] = torch.tensor(list(b[:k]), dtype=torch.int16)
            tails[i, k - min(k, len(b)):] = torch.tensor(list(b[-k:]), dtype=torch.int16)
    return heads, tails, torch.tensor([any(s in b for s in encoded) for b in vocab])


@pytest.mark.parametrize("stop_strings", [
    pytest.param(("\n\nQuestion:",), id="long"), pytest.param(("\n", "é!"), id="short-and-two-byte"),
    pytest.param(("x",), id="one-byte"),
])
def test_the_stop_tables_hold_each_tokens_bytes(stop_strings):
    from grpo.runtime.model import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-demo")  # byte-level BPE: tokens of many bytes, special tokens
    matcher = stops.stop_matcher(tokenizer, stop_strings, "cpu")
    heads, tails, inner = reference_tables(tokenizer, stop_strings)
    assert torch.equal(matcher.heads, heads) and torch.equal(matcher.tails, tails)
    assert torch.equal(matcher.inner, inner)
