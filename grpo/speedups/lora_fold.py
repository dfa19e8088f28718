"""Sampling with each float32 LoRA adapter folded into a copy of its layer's weight, W + s B A.

Each decode step runs every layer on a few rows, where the adapter's two thin products, its
scaling and its sum are a visible share of the step; folded, the logits are the same up to
float32 rounding (bench/RESULTS.md has the measured share).
"""

from __future__ import annotations

import contextlib

import torch

from grpo.speedups.onednn_linear import is_plain_linear


def _foldable(layer) -> bool:
    """Whether a peft LoraLayer is plain LoRA over a whole float32 nn.Linear (not quantized,
    not a ZeRO-3 shard, no DoRA)."""
    base, active = layer.base_layer, layer.active_adapters
    return (is_plain_linear(base) and base.weight.dtype == torch.float32
            and not hasattr(base.weight, "ds_id") and not layer.merged and len(active) == 1
            and active[0] in layer.lora_A and active[0] not in layer.lora_variant)


@contextlib.contextmanager
def lora_folded_for_sampling(model):
    """Decode with each LoRA adapter folded into a copy of its layer's float32 weight, W + s B A.

    The original weights are put back as they were: peft's merge/unmerge subtracts the adapter
    back out, which would leave rounding drift in the frozen reference weights every step. Costs one float32 copy of the adapted weights while decoding.
    In bfloat16 folding would round the adapter away (s B A is far below the spacing of W's
    values), so unless every LoRA layer is foldable the model decodes as it is.
    """
    from peft.tuners.lora import LoraLayer

    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not lora_layers or not all(_foldable(m) for m in lora_layers):
        yield
        return
    originals = [m.base_layer.weight.data for m in lora_layers]
    with torch.no_grad():
        for layer, original in zip(lora_layers, originals):
            layer.base_layer.weight.data = original + layer.get_delta_weight(layer.active_adapters[0])
    try:
        with model.disable_adapter():
            yield
    finally:
        for layer, original in zip(lora_layers, originals):
            layer.base_layer.weight.data = original
