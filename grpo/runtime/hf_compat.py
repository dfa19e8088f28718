"""The transformers API differences this project bridges, in one place.

transformers 5.x renames the KV-cache argument and output field of the models' forward from
`past_key_values` to `cache` (the old name is deprecated, with a FutureWarning on every call,
and goes away in 5.40). Which name a model takes is read from its forward's signature, so
the same code runs on the 4.x and 5.x releases this project supports.
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _takes_cache(forward) -> bool:
    return "cache" in inspect.signature(forward).parameters


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_argument(model, cache) -> dict:
    """{"cache": cache} or {"past_key_values": cache}, whichever `model`'s forward takes."""
    forward = type(_base(model)).forward
    return {"cache" if _takes_cache(forward) else "past_key_values": cache}


def returned_cache(output):
    """The KV cache a forward with use_cache=True returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
