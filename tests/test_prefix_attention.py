"""Decoding with each prompt's keys/values held once per group gives what the repeated cache gives:
the split-softmax attention against plain attention over each row's whole sequence (padding,
finished rows, unwritten fixed-cache positions, all-padding prompts, GQA/MQA/MHA, bfloat16), and
whole generations against the repeated cache and the sampler's log-probs against the trainer's."""

import types

import pytest
import torch

from grpo.runtime.model import load_model_and_tokenizer
from grpo.speedups.prefix_attention import AVAILABLE, SharedPrefix, shared_prefix_attention
from grpo.rollout import SamplingParams, completion_logprobs, generate

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this transformers has no attention registry")


def reference_attention(q, k, v, key_mask):
    """Plain softmax attention of one query per row over its own full (prompt + generated) keys,
    with the prompt padding masked; GQA by repeating key/value heads. q (A, H, 1, D)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (A, H, 1, L)
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)  # (A, 1, H, D)


@pytest.mark.parametrize("active", [
    pytest.param([0, 2, 3, 5], id="some-rows-finished"),  # rows 1 and 4 finished earlier; row // group = prompt
    pytest.param([0, 1, 2, 3, 4, 5], id="all-rows-decoding"),  # every row still decoding, gathered by index
])
def test_split_softmax_equals_attention_over_the_whole_sequence(active):
    g, gen = torch.Generator().manual_seed(0), 3
    prompts, group, heads, kv_heads, dim, plen = 2, 3, 4, 2, 8, 5
    pk, pv = torch.randn(prompts, kv_heads, plen, dim, generator=g), torch.randn(prompts, kv_heads, plen, dim, generator=g)
    pmask = torch.tensor([[True] * 5, [False, False, True, True, True]])  # prompt 1 is left-padded
    rows = torch.tensor(active)
    q = torch.randn(len(rows), heads, 1, dim, generator=g)
    sk, sv = torch.randn(len(rows), kv_heads, gen, dim, generator=g), torch.randn(len(rows), kv_heads, gen, dim, generator=g)
    prefix = SharedPrefix([pk], [pv], pmask, group, rows)
    got, _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, sk, sv, None,
                                     scaling=dim**-0.5, grpo_shared_prefix=prefix)
    prompt = rows // group
    full_k, full_v = torch.cat([pk[prompt], sk], 2), torch.cat([pv[prompt], sv], 2)
    key_mask = torch.cat([pmask[prompt], torch.ones(len(rows), gen, dtype=torch.bool)], 1)
    torch.testing.assert_close(got, reference_attention(q, full_k, full_v, key_mask), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [
    pytest.param(4, 2, id="gqa"), pytest.param(6, 1, id="mqa"), pytest.param(3, 3, id="mha"),
])
def test_fixed_cache_attention_masks_unwritten_positions_and_all_padding_prompts(heads, kv_heads):
    """The compiled decode's layout: every row in order (rows=None), a generated cache of T = 6 slots
    of which the first newest + 1 = 3 are written (the rest hold large stale values that must not
    count), and a third prompt that is all padding (a row the batch was padded with)."""
    g, gen, written = torch.Generator().manual_seed(1), 6, 3
    prompts, group, dim, plen = 3, 2, 8, 4
    pk = torch.randn(prompts, kv_heads, plen, dim, generator=g)
    pv = torch.randn(prompts, kv_heads, plen, dim, generator=g)
    pmask = torch.tensor([[True] * 4, [False, True, True, True], [False] * 4])
    rows = prompts * group
    q = torch.randn(rows, heads, 1, dim, generator=g)
    sk, sv = torch.randn(rows, kv_heads, gen, dim, generator=g), torch.randn(rows, kv_heads, gen, dim, generator=g)
    sk[:, :, written:], sv[:, :, written:] = 1e4, -1e4  # stale values from an earlier rollout
    prefix = SharedPrefix([pk], [pv], pmask, group, None, newest=torch.tensor(written - 1))
    got, _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, sk, sv, None, scaling=dim**-0.5,
                                     grpo_shared_prefix=prefix)
    prompt = torch.arange(rows) // group
    full_k = torch.cat([pk[prompt], sk[:, :, :written]], 2)
    full_v = torch.cat([pv[prompt], sv[:, :, :written]], 2)
    key_mask = torch.cat([pmask[prompt], torch.ones(rows, written, dtype=torch.bool)], 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_attention(q, full_k, full_v, key_mask), atol=1e-6, rtol=1e-5)


def test_bfloat16_attention_is_the_float32_one_to_bfloat16_precision():
    g = torch.Generator().manual_seed(2)
    pk, pv = torch.randn(2, 2, 40, 16, generator=g), torch.randn(2, 2, 40, 16, generator=g)
    q = torch.randn(8, 4, 1, 16, generator=g)
    sk, sv = torch.randn(8, 2, 5, 16, generator=g), torch.randn(8, 2, 5, 16, generator=g)
    pmask = torch.ones(2, 40, dtype=torch.bool)
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        prefix = SharedPrefix([pk.to(dtype)], [pv.to(dtype)], pmask, 4, None)
        outs[dtype], _ = shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q.to(dtype), sk.to(dtype),
                                                 sv.to(dtype), None, scaling=0.25, grpo_shared_prefix=prefix)
    assert outs[torch.bfloat16].dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: ~0.4% relative per rounding, a few roundings deep
    torch.testing.assert_close(outs[torch.bfloat16].float(), outs[torch.float32], atol=3e-2, rtol=3e-2)


class LargestOutput(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op makes."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


@pytest.mark.parametrize("rows", [pytest.param(None, id="all-rows"), pytest.param([0, 1, 5, 7], id="some-rows")])
def test_the_prompt_is_never_copied_per_row_nor_its_heads_repeated(rows):
    """8 rows of 2 prompts (G = 4), 8 query heads on 2 key/value heads, a 64-token prompt: a copy of the
    prompt per row would be 8 x 2 x 64 x 16 elements, a repeat per query head 4 times that; the
    largest tensor the attention makes is the scores, 2 x 2 x (4 x 4) x 64, a quarter of the first."""
    g = torch.Generator().manual_seed(3)
    pk, pv = torch.randn(2, 2, 64, 16, generator=g), torch.randn(2, 2, 64, 16, generator=g)
    active = 8 if rows is None else len(rows)
    q = torch.randn(active, 8, 1, 16, generator=g)
    sk, sv = torch.randn(active, 2, 3, 16, generator=g), torch.randn(active, 2, 3, 16, generator=g)
    active_rows = None if rows is None else torch.tensor(rows)
    prefix = SharedPrefix([pk], [pv], torch.ones(2, 64, dtype=torch.bool), 4, active_rows)
    with LargestOutput() as largest:
        shared_prefix_attention(types.SimpleNamespace(layer_idx=0), q, sk, sv, None, grpo_shared_prefix=prefix)
    assert largest.numel == 2 * 2 * 16 * 64 < 8 * 2 * 64 * 16


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    return model.eval(), tokenizer


def test_generation_with_shared_prompt_keys_equals_the_repeated_cache(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 12+7?")["input_ids"], tokenizer("Hi")["input_ids"]]  # padded batch
    eos = tokenizer.eos_token_id
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    # A bias towards EOS makes some rows finish early, so rows leave the decode batch mid-way.
    hook = model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 4.0)))
    try:
        shared = generate(model, tokenizer, prompts, 4, params, seeds=[3, 4], share_prompt_kv=True)
        repeated = generate(model, tokenizer, prompts, 4, params, seeds=[3, 4], share_prompt_kv=False)
    finally:
        hook.remove()
    lengths = shared.completion_mask.sum(1)
    assert lengths.min() < lengths.max() and not shared.truncated.all()  # rows did finish at different steps
    assert torch.equal(shared.completion_ids, repeated.completion_ids)
    torch.testing.assert_close(shared.token_entropy, repeated.token_entropy, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation != "grpo_shared_prefix"  # restored after decoding


@pytest.mark.parametrize("share", [pytest.param(True, id="shared-prefix"), pytest.param(False, id="repeated-cache")])
def test_the_samplers_logprobs_are_the_trainers(tiny, share):
    model, tokenizer = tiny
    prompts = [tokenizer("Question: 12+7?")["input_ids"], tokenizer("Hi")["input_ids"]]
    batch = generate(model, tokenizer, prompts, 3, SamplingParams(temperature=0.7, max_new_tokens=10), seeds=[1, 2],
                     share_prompt_kv=share)
    mask = batch.completion_mask.bool()
    trainer = completion_logprobs(model, batch, temperature=0.7)
    torch.testing.assert_close(batch.sampler_logprobs[mask], trainer[mask], atol=1e-5, rtol=1e-5)
    assert (batch.sampler_logprobs[~mask] == 0).all()
