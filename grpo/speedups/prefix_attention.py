"""Decoding attention that reads each prompt's keys and values once for its whole group.

After the prompt pass, the G completions of a prompt attend to the same prompt keys and
values. A KV cache repeated G times (what a plain batch holds) makes every decode step read G
copies of them: after GSM8K's ~1,000-token 8-shot prompt that reading, not arithmetic, bounds
decoding on a CPU. Here the prompt's keys/values stay once per prompt and the decode cache
holds only the generated tokens. Each step's softmax runs over [prompt scores, generated
scores] of a row, the prompt scores coming from one matrix product per prompt with the
queries of all its rows stacked (so the prompt's keys/values are read once per group).

Used through transformers' attention-function registry, for decode steps only (one query
token); `generate` falls back to the repeated cache where the model's cache or attention is
of another kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grpo.speedups.kv_cache import is_plain_filled_layer

NAME = "grpo_shared_prefix"


@dataclass
class SharedPrefix:
    """The prompts' keys/values per layer and where each decode row's prompt is."""

    keys: list[torch.Tensor]  # per layer (N, Hkv, P, D)
    values: list[torch.Tensor]  # per layer (N, Hkv, P, D)
    prompt_mask: torch.Tensor  # (N, P) bool, False = left padding
    group_size: int
    rows: torch.Tensor  # (A,) original row index of each active decode row; prompt = row // G


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            grpo_shared_prefix: SharedPrefix | None = None, **kwargs):
    """query (A, H, 1, D); key, value (A, Hkv, t, D): the generated tokens only (no padding).
    Returns (A, 1, H, D) as transformers' attention functions do."""
    prefix = grpo_shared_prefix
    if prefix is None or query.shape[2] != 1:
        raise RuntimeError(f"{NAME} attention is for decode steps with the prompts' SharedPrefix")
    prompt_keys, prompt_values = prefix.keys[module.layer_idx], prefix.values[module.layer_idx]
    rows, heads, _, dim = query.shape
    num_prompts, kv_heads, prompt_len, _ = prompt_keys.shape
    n_rep, g = heads // kv_heads, prefix.group_size
    scale = dim**-0.5 if scaling is None else scaling
    q = query.view(rows, kv_heads, n_rep, dim)  # the heads that share a key/value head, side by side
    prompt, slot = prefix.rows // g, prefix.rows % g

    def stack(x: torch.Tensor) -> torch.Tensor:  # (A, Hkv, n_rep, X) -> (N, Hkv, G * n_rep, X)
        out = x.new_zeros(num_prompts, g, kv_heads, n_rep, x.shape[-1])
        out[prompt, slot] = x
        return out.permute(0, 2, 1, 3, 4).reshape(num_prompts, kv_heads, g * n_rep, x.shape[-1])

    def unstack(x: torch.Tensor) -> torch.Tensor:  # the inverse, for the active rows
        return x.view(num_prompts, kv_heads, g, n_rep, x.shape[-1]).permute(0, 2, 1, 3, 4)[prompt, slot]

    prompt_scores = torch.matmul(stack(q), prompt_keys.transpose(-1, -2))  # (N, Hkv, G * n_rep, P)
    prompt_scores = prompt_scores.masked_fill(~prefix.prompt_mask[:, None, None, :], float("-inf"))
    own_scores = torch.matmul(q, key.transpose(-1, -2))  # (A, Hkv, n_rep, t)
    scores = torch.cat([unstack(prompt_scores), own_scores], dim=-1).float() * scale
    weights = torch.softmax(scores, dim=-1).to(query.dtype)
    out = unstack(torch.matmul(stack(weights[..., :prompt_len]), prompt_values))  # (A, Hkv, n_rep, D)
    out = out + torch.matmul(weights[..., prompt_len:], value)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


try:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, shared_prefix_attention)
    AVAILABLE = True
except ImportError:  # older transformers: decode with the repeated cache
    AVAILABLE = False


def supports_shared_prefix(model, cache) -> bool:
    """Whether `model`'s decode steps can use shared_prefix_attention after this prompt pass."""
    config = _config(model)
    layers = getattr(cache, "layers", None)
    return (AVAILABLE and config is not None
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
            and isinstance(layers, list) and len(layers) > 0
            and all(is_plain_filled_layer(layer) for layer in layers))


@contextlib.contextmanager
def decode_with_shared_prefix(model):
    """The model's attention is shared_prefix_attention inside the block (decode steps only)."""
    config = _config(model)
    previous = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "config", None)
