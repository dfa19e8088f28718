"""A KV cache that grows in place while decoding.

transformers' DynamicLayer appends each new token with `torch.cat`, which copies the whole
cache of the layer at every step. After a long prompt (GSM8K 8-shot: ~1,000 tokens, repeated
for the G rows of a group) that copy is most of the decoding time on a CPU. Here each layer's
keys and values live in a buffer with room for the whole completion; a step writes its token
in place and the layer exposes a view of the filled part, so attention sees exactly what
DynamicLayer would give it.
"""

from __future__ import annotations

import torch

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # older transformers: no layer classes, the cache stays as it is
    DynamicLayer = None


if DynamicLayer is not None:

    class InPlaceLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of preallocated (B, H, capacity, D) buffers."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
            super().__init__()
            self.device = keys.device
            self.length = keys.shape[-2]
            self._keys = self._buffer(keys, max(capacity, self.length))
            self._values = self._buffer(values, max(capacity, self.length))
            self._expose()
            self.is_initialized = True

        @staticmethod
        def _buffer(filled: torch.Tensor, capacity: int) -> torch.Tensor:
            b, h, n, d = filled.shape
            buffer = filled.new_empty(b, h, capacity, d)
            buffer[:, :, :n] = filled
            return buffer

        def _expose(self) -> None:
            self.keys = self._keys[:, :, : self.length]
            self.values = self._values[:, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            new = key_states.shape[-2]
            if self.length + new > self._keys.shape[2]:  # past the planned capacity: grow (rare)
                self._keys = self._buffer(self.keys, 2 * (self.length + new))
                self._values = self._buffer(self.values, 2 * (self.length + new))
            self._keys[:, :, self.length : self.length + new] = key_states
            self._values[:, :, self.length : self.length + new] = value_states
            self.length += new
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("InPlaceLayer is for sampling only")


def is_plain_filled_layer(layer) -> bool:
    """A filled transformers DynamicLayer of (B, H, T, D) keys (not sliding-window, quantized, ...)."""
    return (DynamicLayer is not None and type(layer) is DynamicLayer and layer.is_initialized
            and layer.keys.dim() == 4)


def grow_in_place(cache, extra_tokens: int):
    """Swap the plain DynamicLayers of a filled cache for in-place ones with room for
    `extra_tokens` more positions. Other layer kinds (sliding window, quantized) and caches
    without a `layers` list are left as they are. Returns the cache."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        return cache
    for i, layer in enumerate(layers):
        if is_plain_filled_layer(layer):
            layers[i] = InPlaceLayer(layer.keys, layer.values, layer.keys.shape[-2] + extra_tokens)
    return cache


def empty_in_place_cache(like, rows: int, capacity: int):
    """A new cache of `like`'s class with one empty in-place layer per layer of `like` (same
    heads, head size, dtype, device), `rows` rows and room for `capacity` positions."""
    fresh = type(like)()
    fresh.layers = [
        InPlaceLayer(layer.keys.new_empty(rows, layer.keys.shape[1], 0, layer.keys.shape[3]),
                     layer.values.new_empty(rows, layer.values.shape[1], 0, layer.values.shape[3]), capacity)
        for layer in like.layers
    ]
    return fresh
