"""The KV cache of a group decode: N prompts, G completions each, B = N x G rows.

After the prompt pass the G rows of a prompt share its keys and values. Where the model's
cache and attention allow it, on every device, they stay once per prompt and the decode cache
holds the generated tokens only (prefix_attention.py); otherwise the prompt cache is repeated for
the G rows. Either way the decode steps write their keys/values in place (kv_cache.py).
"""

from __future__ import annotations

import contextlib

import torch

from grpo.runtime.hf_compat import cache_argument
from grpo.speedups.kv_cache import empty_in_place_cache, grow_in_place
from grpo.speedups.prefix_attention import SharedPrefix, decode_with_shared_prefix, supports_shared_prefix


class GroupDecodeCache:
    """What each decode step hands the model, for the rows still decoding.

    rows: (A,) original row index (0..B-1) of each active row, in cache order.
    """

    compacts = True  # finished rows can leave the batch (`keep`)

    def __init__(self, model, prompt_cache, prompt_mask: torch.Tensor, group_size: int, max_new_tokens: int,
                 share_prompt_kv: bool = True):
        num_rows = prompt_mask.shape[0] * group_size
        self.model = model
        self.rows = torch.arange(num_rows, device=prompt_mask.device)
        self.num_rows, self.prefix = num_rows, None
        padded = not bool(prompt_mask.all())
        if share_prompt_kv and supports_shared_prefix(model, prompt_cache):
            layers = prompt_cache.layers
            self.prefix = SharedPrefix([layer.keys for layer in layers], [layer.values for layer in layers],
                                       prompt_mask.bool() if padded else None, group_size, None)
            self.cache = empty_in_place_cache(prompt_cache, num_rows, max_new_tokens)
            self.attention = None  # generated tokens have no padding; the prompt mask is in `prefix`
        else:
            prompt_cache.batch_repeat_interleave(group_size)
            self.cache = grow_in_place(prompt_cache, max_new_tokens)  # no per-token copy of the cache
            self.attention = prompt_mask.repeat_interleave(group_size, dim=0) if padded else None  # (B, P)

    def keep(self, index: torch.Tensor) -> None:
        """Only the active rows at positions `index` (A',) go on decoding."""
        self.cache.batch_select_indices(index)
        self.rows = self.rows[index]
        if self.attention is not None:
            self.attention = self.attention[index]

    def logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (A, V) of the token after `tokens` (A,) at `positions` (A,), for the active rows."""
        if self.attention is not None:
            self.attention = torch.cat([self.attention, self.attention.new_ones(len(self.rows), 1)], dim=1)
        inputs = {"attention_mask": self.attention, "use_cache": True, **cache_argument(self.model, self.cache)}
        if self.prefix is not None:
            self.prefix.rows = None if len(self.rows) == self.num_rows else self.rows  # None: no gather
            inputs["grpo_shared_prefix"] = self.prefix
        return self.model(input_ids=tokens.unsqueeze(1), position_ids=positions.unsqueeze(1), **inputs).logits[:, -1]

    def attention_context(self):
        """The model's attention is the shared-prefix one inside the block, when it is used."""
        return decode_with_shared_prefix(self.model) if self.prefix is not None else contextlib.nullcontext()
