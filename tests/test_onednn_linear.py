"""OneDnnLinear: float32 CPU products on oneDNN give nn.Linear's values and gradients; other
dtypes and nn.Linear subclasses are left to PyTorch."""

import pytest
import torch

from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from grpo.speedups.lora_fold import lora_folded_for_sampling
from grpo.speedups.onednn_linear import (OneDnnLinear, is_plain_linear, onednn_available, onednn_linear, onednn_plan,
                                use_onednn_linears)

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def test_values_by_hand():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    weight = torch.tensor([[3.0, 4.0], [5.0, 6.0], [0.0, -2.0]])
    bias = torch.tensor([1.0, -1.0, 0.25])
    # row 0: 1*3+2*4+1 = 12, 1*5+2*6-1 = 16, 0-4+0.25 = -3.75
    # row 1: 1.5-4+1 = -1.5, 2.5-6-1 = -4.5, 0+2+0.25 = 2.25
    expected = torch.tensor([[12.0, 16.0, -3.75], [-1.5, -4.5, 2.25]])
    torch.testing.assert_close(onednn_linear(x, weight, bias), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(onednn_linear(x, weight), expected - bias, rtol=0, atol=1e-6)


def test_gradients_match_autograd_through_f_linear():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 24)[:, :, :16].requires_grad_()  # (3, 5, 16), not contiguous
    weight = torch.randn(7, 16, requires_grad=True)
    bias = torch.randn(7, requires_grad=True)
    upstream = torch.randn(3, 5, 7)
    (onednn_linear(x, weight, bias) * upstream).sum().backward()
    ours = x.grad.clone(), weight.grad.clone(), bias.grad.clone()
    x.grad = weight.grad = bias.grad = None
    (torch.nn.functional.linear(x, weight, bias) * upstream).sum().backward()
    for got, want in zip(ours, (x.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_input_still_does():
    torch.manual_seed(1)
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(6, 8)
    onednn_linear(x, weight).sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(4, 8), rtol=1e-5, atol=1e-5)  # d sum(xW^T) / dx
    assert weight.grad is None


def test_bfloat16_runs_nn_linear_unchanged():
    torch.manual_seed(2)
    x, weight = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(6, 8, dtype=torch.bfloat16)
    assert torch.equal(onednn_linear(x, weight), torch.nn.functional.linear(x, weight))


class QuantizedLike(torch.nn.Linear):
    """Stands in for bitsandbytes' Linear4bit, an nn.Linear subclass with its own forward."""


def test_swap_takes_plain_float32_linears_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), QuantizedLike(4, 4), torch.nn.Linear(4, 2).bfloat16())
    keys = set(model.state_dict())
    assert use_onednn_linears(model) == 1
    assert [type(m) for m in model] == [OneDnnLinear, QuantizedLike, torch.nn.Linear]
    assert set(model.state_dict()) == keys
    assert is_plain_linear(model[0]) and not is_plain_linear(model[1])


@pytest.mark.parametrize("which, lora_class, base_class", [
    ("all", "OneDnnLoraLinear", OneDnnLinear),
    ("head", "FusedLoraLinear", torch.nn.Linear),  # the fused adapter on PyTorch's products
])
def test_swapped_lora_model_matches_and_still_folds(tiny_model_dir, which, lora_class, base_class):
    base, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = attach_lora(base, 4, 8, 0.0, ("q_proj", "v_proj", "up_proj", "down_proj"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[65, 66, 67, 68, 69]])
    expected = model(input_ids=ids).logits
    expected.float().pow(2).mean().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    assert use_onednn_linears(model, which) > 0
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == lora_class and type(q_proj.base_layer) is base_class
    logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    logits.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, want_grads[name], rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        with model.disable_adapter():
            assert (model(input_ids=ids).logits - expected).abs().max() > 1e-2  # the adapter is off
    with torch.no_grad(), lora_folded_for_sampling(model):  # folding still applies to the swapped layers
        assert model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_lora_model_is_left_alone(tiny_model_dir):
    # Its float32 adapters would run on oneDNN too, which decoded 12% slower (measured).
    base, _ = load_model_and_tokenizer(tiny_model_dir, dtype="bfloat16")
    model = attach_lora(base, 4, 8, 0.0, ("q_proj", "v_proj"))
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    assert use_onednn_linears(model) == 0


def test_head_only_swaps_the_output_head_of_a_lora_model(tiny_model_dir):
    base, _ = load_model_and_tokenizer(tiny_model_dir)
    model = attach_lora(base, 4, 8, 0.0, ("q_proj", "v_proj"))
    ids = torch.tensor([[65, 66, 67, 68, 69]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    lora_layers = 2 * len(model.base_model.model.model.layers)
    assert use_onednn_linears(model, "head") == 1 + lora_layers  # the head, and the LoRA layers fused
    assert type(model.get_output_embeddings()) is OneDnnLinear
    assert not any(type(m) is OneDnnLinear for name, m in model.named_modules() if "lm_head" not in name)
    assert use_onednn_linears(model, "head") == 0  # already swapped
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="use all or head"):
        use_onednn_linears(model, "body")


@pytest.mark.parametrize("setting, capability, plan", [
    ("torch", "AVX512", None),
    ("onednn", "AVX2", "all"),
    ("auto", "AVX512", "all"),  # oneDNN runs AVX-512 where MKL may not (AMD)
    ("auto", "AVX2", "head"),  # MKL won the layers' products there, oneDNN the wide head
    ("auto", "DEFAULT", "head"),
])
def test_plan_follows_the_setting_and_the_cpu(monkeypatch, setting, capability, plan):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn_plan(setting) == plan
