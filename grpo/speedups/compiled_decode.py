"""Decode steps through torch.compile over fixed-address buffers reused across rollouts
(rollout.compile: true).

Eager decoding launches every layer's kernels from Python at every token; on a GPU, for the
batches of a rollout, that launch overhead rather than the arithmetic sets the pace. Here the
model's one-token forward is compiled (mode "reduce-overhead" on CUDA: the step replays as a CUDA
graph) over buffers whose addresses never change:
- the prompts' keys/values, once per prompt, read by the shared-prefix attention
  (prefix_attention.py): no copy per completion, no key/value head repeated per query head;
- the generated tokens' keys/values of every row, written at a step counter that lives on the
  device: every step runs the same graph and nothing is read back to the host.

The buffers belong to the model: one set per (group size, new tokens rounded up to a multiple of
NEW_TOKENS_BUCKET, dtype, device), reused by every later rollout whose prompts fit (positions past
a rollout's own are masked, so a changing horizon, as in on-policy distillation, shares them).
Their prompt count and prompt length only grow: a call with fewer prompts (an evaluation's last
chunk) pads its batch with rows whose results are dropped, shorter prompts are masked. The
prompt-length dimension is compiled as dynamic, so a longer prompt allocates longer buffers
without a recompile (CUDA graphs record once more); more prompts than any earlier call recompile
once. Finished rows stay in the batch (`compacts` is False). The buffers stay allocated while the
model lives (for the Qwen2.5-0.5B shape at 64 prompts x 8, a 1,024-position prompt and 256 new
tokens: 0.8 GB each for the prompts and for the generated tokens, in bfloat16).
"""

from __future__ import annotations

import weakref

import torch

from grpo.runtime.hf_compat import cache_argument
from grpo.speedups.prefix_attention import SharedPrefix, decode_with_shared_prefix, supports_shared_prefix

PROMPT_BUCKET = 128  # prompt buffers grow to a multiple of this many positions
NEW_TOKENS_BUCKET = 64  # generated-token buffers hold a multiple of this many positions
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {shape key: DecodeBuffers}


def compiled_forward(model):
    """`torch.compile(model)` made once per model: CUDA graphs on a GPU, Inductor's code elsewhere."""
    if model not in _COMPILED:
        device = next(model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        _COMPILED[model] = torch.compile(model, mode=mode, dynamic=False)
    return _COMPILED[model]


class DecodeBuffers:
    """The fixed-address tensors of one decode shape; also the KV cache the model's layers update.

    prompt_keys, prompt_values: per layer (N, Hkv, P, D); prompt_mask (N, P) bool;
    keys, values: per layer (N * G, Hkv, T, D), the generated tokens; newest: () long, the position
    the current step writes (generated positions <= newest are valid).
    """

    def __init__(self, layers: int, num_prompts: int, group_size: int, prompt_len: int, new_tokens: int,
                 kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        # zeros, never empty: masked positions are multiplied by 0 and must not hold NaN
        def zeros(*shape, kind=dtype):
            tensor = torch.zeros(shape, dtype=kind, device=device)
            torch._dynamo.mark_static_address(tensor, guard=False)
            return tensor

        rows = num_prompts * group_size
        self.prompt_keys = [zeros(num_prompts, kv_heads, prompt_len, head_dim) for _ in range(layers)]
        self.prompt_values = [zeros(num_prompts, kv_heads, prompt_len, head_dim) for _ in range(layers)]
        self.prompt_mask = zeros(num_prompts, prompt_len, kind=torch.bool)
        for tensor in (*self.prompt_keys, *self.prompt_values):
            torch._dynamo.mark_dynamic(tensor, 2)
        torch._dynamo.mark_dynamic(self.prompt_mask, 1)
        self.keys = [zeros(rows, kv_heads, new_tokens, head_dim) for _ in range(layers)]
        self.values = [zeros(rows, kv_heads, new_tokens, head_dim) for _ in range(layers)]
        self.newest = zeros(kind=torch.long)
        self.prefix = SharedPrefix(self.prompt_keys, self.prompt_values, self.prompt_mask, group_size, None,
                                   self.newest)

    @property
    def num_prompts(self) -> int:
        return self.prompt_mask.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.prompt_mask.shape[1]

    def fill(self, prompt_cache, prompt_mask: torch.Tensor) -> None:
        """Copy this rollout's prompt keys/values (N', Hkv, P', D) per layer in; N' <= N, P' <= P."""
        num_prompts, prompt_len = prompt_mask.shape
        for keys, values, layer in zip(self.prompt_keys, self.prompt_values, prompt_cache.layers, strict=True):
            keys[:num_prompts, :, :prompt_len] = layer.keys
            values[:num_prompts, :, :prompt_len] = layer.values
        self.prompt_mask.zero_()
        self.prompt_mask[:num_prompts, :prompt_len] = prompt_mask.bool()
        self.newest.zero_()

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """The layer's new token (B, Hkv, 1, D) written at `newest`; returns the whole generated cache."""
        self.keys[layer_idx].index_copy_(2, self.newest.view(1), key_states)
        self.values[layer_idx].index_copy_(2, self.newest.view(1), value_states)
        return self.keys[layer_idx], self.values[layer_idx]


def decode_buffers(model, prompt_cache, prompt_mask: torch.Tensor, group_size: int, new_tokens: int) -> DecodeBuffers:
    """The model's buffers for this shape, filled with this rollout's prompts; made (or grown) when
    none fit."""
    first = prompt_cache.layers[0].keys  # (N, Hkv, P, D)
    new_tokens = -(-new_tokens // NEW_TOKENS_BUCKET) * NEW_TOKENS_BUCKET
    key = (group_size, new_tokens, first.dtype, first.device, len(prompt_cache.layers), first.shape[1], first.shape[3])
    held = _BUFFERS.setdefault(model, {})
    num_prompts, prompt_len = prompt_mask.shape
    buffers = held.get(key)
    if buffers is None or buffers.num_prompts < num_prompts or buffers.prompt_len < prompt_len:
        held.pop(key, None)  # the old ones go before the new ones are made
        num_prompts = max(num_prompts, buffers.num_prompts if buffers else 0)
        prompt_len = -(-max(prompt_len, buffers.prompt_len if buffers else 0) // PROMPT_BUCKET) * PROMPT_BUCKET
        buffers = held[key] = DecodeBuffers(len(prompt_cache.layers), num_prompts, group_size, prompt_len,
                                            new_tokens, first.shape[1], first.shape[3], first.dtype, first.device)
    buffers.fill(prompt_cache, prompt_mask)
    return buffers


class CompiledDecodeCache:
    """The same interface as GroupDecodeCache, for the compiled decode step."""

    compacts = False  # a fixed batch: the compiled step's shapes never change

    def __init__(self, model, prompt_cache, prompt_mask: torch.Tensor, group_size: int, max_new_tokens: int):
        if not supports_shared_prefix(model, prompt_cache):
            raise ValueError("rollout.compile=true decodes through the shared-prefix attention, which this model "
                             "cannot use (its attention or KV-cache layers are of another kind: sliding window, "
                             "quantized, or a transformers without an attention registry); set rollout.compile=false")
        self.model, self.step = model, compiled_forward(model)
        self.num_rows = prompt_mask.shape[0] * group_size
        self.rows = torch.arange(self.num_rows, device=prompt_mask.device)
        self.buffers = decode_buffers(model, prompt_cache, prompt_mask, group_size, max_new_tokens)
        self.padding = self.buffers.num_prompts * group_size - self.num_rows  # rows decoded and dropped
        self.cuda = prompt_mask.device.type == "cuda"

    def keep(self, index: torch.Tensor) -> None:
        raise RuntimeError("the compiled decode keeps every row in its batch")

    def logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the token after `tokens` (B,) at `positions` (B,)."""
        if self.padding:
            tokens, positions = torch.cat([tokens, tokens.new_zeros(self.padding)]), torch.cat(
                [positions, positions.new_zeros(self.padding)])
        if self.cuda:  # the previous step's outputs are consumed: its CUDA-graph memory may be reused
            torch.compiler.cudagraph_mark_step_begin()
        out = self.step(input_ids=tokens.unsqueeze(1), position_ids=positions.unsqueeze(1), use_cache=True,
                        grpo_shared_prefix=self.buffers.prefix, **cache_argument(self.model, self.buffers))
        self.buffers.newest.add_(1)
        return out.logits[: self.num_rows, -1]

    def attention_context(self):
        return decode_with_shared_prefix(self.model)
