"""Decoding with each prompt's keys/values held once per group gives what the repeated cache gives."""

import types

import pytest
import torch

from grpo.runtime.model import load_model_and_tokenizer
from grpo.speedups.prefix_attention import AVAILABLE, SharedPrefix, shared_prefix_attention
from grpo.rollout import SamplingParams, generate

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
    pytest.param([0, 1, 2, 3, 4, 5], id="all-rows-decoding"),  # every row still decoding (stacking is a reshape)
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
