"""Counting what waits for the device: tensor reads into Python and tokenizer decodes.

Every tensor method that turns device values into Python values (on a GPU each one is a sync)
is wrapped while the `count` block runs, wherever it is called from (our code or transformers'),
and so are the tokenizer's decode methods.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

# Tensor methods; Tensor.unique calls torch.unique, which is wrapped instead (so it counts once).
READS = ("tolist", "item", "__bool__", "__int__", "__float__", "numpy", "nonzero")


@dataclass
class Counts:
    reads: int = 0
    decodes: int = 0
    by_name: dict = field(default_factory=dict)


@contextlib.contextmanager
def count(tokenizer):
    counts = Counts()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            counts.reads += 1
            counts.by_name[name] = counts.by_name.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return counted

    decode = tokenizer.decode

    def counted_decode(*args, **kwargs):
        counts.decodes += 1
        return decode(*args, **kwargs)

    def counted_batch_decode(sequences, *args, **kwargs):
        return [counted_decode(s, *args, **kwargs) for s in sequences]

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    torch_nonzero, torch_unique = torch.nonzero, torch.unique
    torch.nonzero = wrap("torch.nonzero", torch_nonzero)
    torch.unique = wrap("torch.unique", torch_unique)
    tokenizer.decode, tokenizer.batch_decode = counted_decode, counted_batch_decode
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.nonzero, torch.unique = torch_nonzero, torch_unique
        del tokenizer.decode, tokenizer.batch_decode
