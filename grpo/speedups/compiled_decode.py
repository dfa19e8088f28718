"""Decode steps through torch.compile over a static KV cache (rollout.compile: true).

Eager decoding launches every layer's kernels from Python at every token; on a GPU, for the small
batches of a rollout, that launch overhead rather than the arithmetic sets the pace. Here the
model's one-token forward is compiled once per shape, over transformers' StaticCache (its
tensors never move, so on CUDA the compiled step replays as a CUDA graph: mode
"reduce-overhead"). The prompt is still encoded once per group by the eager prompt pass and its
keys/values copied into the G rows of the static cache.

Shapes must stay fixed for the compiled step to be reused: finished rows stay in the batch
(`compacts` is False) and the cache length is rounded up to a multiple of `LENGTH_BUCKET`, so
steps whose prompts differ a little in length share one compiled graph.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

from grpo.runtime.hf_compat import cache_argument

LENGTH_BUCKET = 128
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward(model):
    """`torch.compile(model)` made once per model: CUDA graphs on a GPU, Inductor's code elsewhere."""
    if model not in _COMPILED:
        device = next(model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        _COMPILED[model] = torch.compile(model, mode=mode, dynamic=False)
    return _COMPILED[model]


class CompiledDecodeCache:
    """The same interface as GroupDecodeCache, for the compiled decode step."""

    compacts = False  # a fixed batch: the compiled step's shapes never change

    def __init__(self, model, prompt_cache, prompt_mask: torch.Tensor, group_size: int, max_new_tokens: int):
        from transformers import StaticCache

        num_prompts, prompt_len = prompt_mask.shape
        num_rows = num_prompts * group_size
        length = -(-(prompt_len + max_new_tokens) // LENGTH_BUCKET) * LENGTH_BUCKET
        self.model, self.step = model, compiled_forward(model)
        self.rows = torch.arange(num_rows, device=prompt_mask.device)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cache = StaticCache(config=base.config, max_cache_len=length)
        first = prompt_cache.layers[0]
        self.cache.early_initialization(num_rows, first.keys.shape[1], first.keys.shape[3], first.keys.dtype,
                                        first.keys.device)
        for static, filled in zip(self.cache.layers, prompt_cache.layers):
            static.keys[:, :, :prompt_len] = filled.keys.repeat_interleave(group_size, dim=0)
            static.values[:, :, :prompt_len] = filled.values.repeat_interleave(group_size, dim=0)
            static.cumulative_length.fill_(prompt_len)
        self.attention = torch.zeros(num_rows, length, dtype=prompt_mask.dtype, device=prompt_mask.device)
        self.attention[:, :prompt_len] = prompt_mask.repeat_interleave(group_size, dim=0)
        self.attention[:, prompt_len : prompt_len + max_new_tokens] = 1

    def keep(self, index: torch.Tensor) -> None:
        raise RuntimeError("the compiled decode keeps every row in its batch")

    def step_inputs(self) -> dict:
        return {"attention_mask": self.attention, "use_cache": True, **cache_argument(self.model, self.cache)}

    def forward(self, **inputs):
        return self.step(**inputs)

    def attention_context(self):
        return contextlib.nullcontext()
