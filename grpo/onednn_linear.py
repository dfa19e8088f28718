"""float32 linear layers on CPU through oneDNN instead of MKL.

PyTorch sends float32 matrix products on CPU to MKL's sgemm. On AMD CPUs MKL runs its AVX2
kernels even where the CPU has AVX-512 (it picks kernels by vendor), while oneDNN, already
inside PyTorch for bfloat16 products, runs AVX-512 on any CPU that has it. Measured on a 2-core
AMD EPYC (Zen 5, AVX-512): a 2,048^3 product 205 GFLOP/s with MKL against 461 with oneDNN;
the SmolLM2-135M shapes (4,000 x 576 -> 1,536 and back) 200 against 455-468; the LM head at
64 rows 123 against 350. Results agree with MKL's to float32 rounding (different summation
order). On Intel CPUs the two are about equal, and on GPUs none of this applies.

`OneDnnLinear` is an nn.Linear whose forward and backward use oneDNN when its input and weight
are float32 on the CPU (anything else runs nn.Linear's own forward). `use_onednn_linears`
turns a model's plain nn.Linear modules into it in place: same parameters, same state_dict.
"""

from __future__ import annotations

import torch


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and the linear op used here."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T (K, N) + bias -> (..., N) on oneDNN; weight may be a strided view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _runs_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.layout == torch.strided and x.numel() > 0)


class _OneDnnLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # x is kept only to make the weight's gradient: frozen (LoRA base) layers keep nothing.
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm(grad_out, weight.t())  # (..., N) @ (N, K)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])  # (M, N)
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad.t() @ x.reshape(-1, x.shape[-1])  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) with float32 CPU products on oneDNN (differentiable); others
    go to F.linear."""
    if not _runs_on_onednn(x, weight) or not onednn_available():
        return torch.nn.functional.linear(x, weight, bias)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        return _onednn_mm(x, weight, bias)
    return _OneDnnLinearFunction.apply(x, weight, bias)


class OneDnnLinear(torch.nn.Linear):
    """nn.Linear whose float32 CPU products run on oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Turn the model's plain float32 CPU nn.Linear modules into OneDnnLinear, in place; returns
    how many. Subclasses of nn.Linear (quantized layers, peft's wrappers) are left as they are."""
    if not onednn_available():
        return 0
    count = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
                and module.weight.device.type == "cpu"):
            module.__class__ = OneDnnLinear
            count += 1
    return count


def is_plain_linear(module: torch.nn.Module) -> bool:
    """nn.Linear or OneDnnLinear: a whole dense weight (not a quantized or wrapped subclass)."""
    return type(module) in (torch.nn.Linear, OneDnnLinear)
