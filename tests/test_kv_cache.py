"""The in-place KV cache layer behaves exactly like transformers' DynamicLayer."""

import pytest
import torch

from grpo.speedups.kv_cache import DynamicLayer, InPlaceLayer, grow_in_place

pytestmark = pytest.mark.skipif(DynamicLayer is None, reason="this transformers has no cache layer classes")


def kv(rows, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 3, generator=g), torch.randn(rows, 2, length, 3, generator=g)


def test_updates_selections_and_repeats_match_dynamic_layer():
    dynamic = DynamicLayer()
    dynamic.update(*kv(2, 5, 0))
    dynamic.batch_repeat_interleave(3)  # 6 rows
    fast = InPlaceLayer(dynamic.keys, dynamic.values, capacity=5 + 2)  # room for 2 tokens: forces one growth
    for step in range(4):
        new = kv(dynamic.keys.shape[0], 1, step + 1)
        expected, got = dynamic.update(*new), fast.update(*new)
        for e, g in zip(expected, got):
            assert torch.equal(e, g)
        assert fast.get_seq_length() == dynamic.get_seq_length() == 6 + step
        assert fast.get_mask_sizes(1) == dynamic.get_mask_sizes(1)
        if step == 1:  # rows 1 and 4 finish
            keep = torch.tensor([0, 2, 3, 5])
            dynamic.batch_select_indices(keep)
            fast.batch_select_indices(keep)
    assert torch.equal(fast.keys, dynamic.keys) and torch.equal(fast.values, dynamic.values)


def test_writes_in_place_without_copying_the_filled_part():
    keys, values = kv(1, 4, 0)
    layer = InPlaceLayer(keys, values, capacity=10)
    before = layer.keys.data_ptr()
    layer.update(*kv(1, 1, 1))
    assert layer.keys.data_ptr() == before and layer.keys.shape[2] == 5


def test_grow_in_place_swaps_only_filled_dynamic_layers():
    class Holder:
        pass

    cache = Holder()
    filled, empty = DynamicLayer(), DynamicLayer()
    filled.update(*kv(1, 3, 0))
    cache.layers = [filled, empty, "other"]
    grow_in_place(cache, 4)
    assert isinstance(cache.layers[0], InPlaceLayer) and cache.layers[1] is empty and cache.layers[2] == "other"
    assert grow_in_place("no layers", 4) == "no layers"
