"""Decoding attention that reads each prompt's keys and values once for its whole group.

After the prompt pass, the G completions of a prompt attend to the same prompt keys and
values. A KV cache repeated G times (what a plain batch holds) makes every decode step read G
copies of them, and grouped-query attention through SDPA or the eager path repeats each key/value
head for its query heads on top: after GSM8K's ~1,000-token 8-shot prompt that reading, not
arithmetic, bounds decoding. Here the prompt's keys/values stay once per prompt and the decode
cache holds only the generated tokens. The queries are laid out (rows, key/value heads, query
heads of that key/value head, D), so one matrix product per prompt and key/value head takes the
queries of all its rows and heads at once: each prompt key/value is read once per group, never
repeated. The two parts (prompt, generated tokens) are attended separately and merged by their
softmax normalisers (the split softmax of flash-decoding), so no score matrix is concatenated.

Used through transformers' attention-function registry (`AttentionInterface`), for decode steps
only (one query token). The name is not one of transformers' mask functions, so the model builds
no mask at all for these steps (masking_utils returns early for such names): no per-step mask and
no read of the device. Prompt padding is masked here from the prompt mask; generated tokens are
either all valid (the growing cache of the eager loop) or valid up to the step counter on the
device (the fixed-size cache of the compiled loop).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grpo.speedups.kv_cache import is_plain_filled_layer

NAME = "grpo_shared_prefix"
# The supported attentions of the prompt pass, whose per-layer DynamicLayer keys/values this reads.
PROMPT_ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass
class SharedPrefix:
    """The prompts' keys/values per layer and where each decode row's prompt is."""

    keys: list[torch.Tensor]  # per layer (N, Hkv, P, D)
    values: list[torch.Tensor]  # per layer (N, Hkv, P, D)
    prompt_mask: torch.Tensor | None  # (N, P) bool, False = padding; None = no padding
    group_size: int
    rows: torch.Tensor | None  # (A,) original row of each active row (prompt = row // G); None = all N * G in order
    newest: torch.Tensor | None = None  # () long: generated positions <= newest are valid; None = all are


def split_softmax_attention(query: torch.Tensor, prompt_keys: torch.Tensor, prompt_values: torch.Tensor,
                            prompt_mask: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor,
                            generated_valid: torch.Tensor | None, group_size: int, rows: torch.Tensor | None,
                            scale: float) -> torch.Tensor:
    """softmax([q.Kp, q.Kg] * scale) @ [Vp; Vg] for one decode token per row, GQA without repeats.

    query (A, H, 1, D); prompt_keys, prompt_values (N, Hkv, P, D); prompt_mask (N, P) bool or None
    (no padding); keys, values (A, Hkv, T, D) the generated tokens; generated_valid (T,) bool or None
    (all valid); rows (A,) or None (A = N * G rows in prompt order). Query head h uses key/value
    head h // (H / Hkv), as transformers' repeat_kv does. Scores are made in the query's dtype (as
    transformers' eager attention does) and normalised in float32. Returns (A, 1, H, D).
    """
    num_rows, heads, _, dim = query.shape
    num_prompts, kv_heads, _, _ = prompt_keys.shape
    per_kv, g = heads // kv_heads, group_size
    q = (query * scale).reshape(num_rows, kv_heads, per_kv, dim)  # (A, Hkv, r, D)
    if rows is None:
        def stack(x):  # (A, Hkv, r, X) -> (N, Hkv, G * r, X): a prompt's rows side by side
            return x.view(num_prompts, g, kv_heads, per_kv, x.shape[-1]).transpose(1, 2).reshape(
                num_prompts, kv_heads, g * per_kv, x.shape[-1])

        def unstack(x):  # the inverse
            return x.view(num_prompts, kv_heads, g, per_kv, x.shape[-1]).transpose(1, 2).reshape(
                num_rows, kv_heads, per_kv, x.shape[-1])
    else:
        prompt, slot = rows // g, rows % g

        def stack(x):  # absent (finished) rows are zeros, their results never read
            out = x.new_zeros(num_prompts, g, kv_heads, per_kv, x.shape[-1])
            out[prompt, slot] = x
            return out.transpose(1, 2).reshape(num_prompts, kv_heads, g * per_kv, x.shape[-1])

        def unstack(x):
            return x.view(num_prompts, kv_heads, g, per_kv, x.shape[-1]).transpose(1, 2)[prompt, slot]

    prompt_out, prompt_lse = _attend(stack(q), prompt_keys, prompt_values,
                                     None if prompt_mask is None else prompt_mask[:, None, None, :])
    prompt_out, prompt_lse = unstack(prompt_out), unstack(prompt_lse)  # (A, Hkv, r, D), (A, Hkv, r, 1)
    own_out, own_lse = _attend(q, keys, values, generated_valid)
    total = torch.logaddexp(prompt_lse, own_lse)
    out = prompt_out * torch.exp(prompt_lse - total) + own_out * torch.exp(own_lse - total)  # (A, Hkv, r, D)
    return out.to(query.dtype).reshape(num_rows, 1, heads, dim)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q k^T) v in float32, logsumexp(q k^T)) for q (..., M, D), k, v (..., L, D), valid
    broadcastable to (..., M, L) or None. A masked score is the lowest finite float, so a row with
    nothing valid has a finite log-sum-exp that weighs nothing in the merge (never NaN)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float()  # (..., M, L)
    if valid is not None:
        scores = scores.masked_fill(~valid, torch.finfo(torch.float32).min)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v).float(), lse


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            grpo_shared_prefix: SharedPrefix | None = None, **kwargs):
    """transformers' attention-function signature: query (A, H, 1, D); key, value (A, Hkv, T, D) the
    generated tokens (what the decode cache returned). Returns ((A, 1, H, D), None)."""
    prefix = grpo_shared_prefix
    if prefix is None or query.shape[2] != 1:
        raise RuntimeError(f"{NAME} attention is for decode steps with the prompts' SharedPrefix")
    layer = module.layer_idx
    valid = None
    if prefix.newest is not None:
        valid = torch.arange(key.shape[2], device=key.device) <= prefix.newest  # (T,)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = split_softmax_attention(query, prefix.keys[layer], prefix.values[layer], prefix.prompt_mask, key, value,
                                  valid, prefix.group_size, prefix.rows, scale)
    return out, None


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
            and getattr(config, "_attn_implementation", None) in PROMPT_ATTENTIONS
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
