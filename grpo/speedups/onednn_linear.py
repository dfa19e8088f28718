"""float32 linear layers on CPU through oneDNN instead of MKL.

PyTorch sends float32 matrix products on CPU to MKL's sgemm. On AMD CPUs MKL runs its AVX2
kernels even where the CPU has AVX-512 (it picks kernels by vendor), while oneDNN, already
inside PyTorch for bfloat16 products, runs AVX-512 on any CPU that has it, about twice MKL's
rate on an AVX-512 AMD CPU (bench/RESULTS.md). Results agree with MKL's to float32 rounding
(different summation order). Without AVX-512 MKL is the faster one except for the wide output
head (`onednn_plan`); Intel CPUs were not measured; on GPUs none of this applies.

`OneDnnLinear` is an nn.Linear whose forward and backward use oneDNN when its input and weight
are float32 on the CPU (anything else runs nn.Linear's own forward). `FusedLoraLinear` is
peft's LoRA Linear with the adapter's output added into the layer's by one accumulating product
(peft writes B(A(x)), scales it and adds it: two more passes over the layer's output, and their
gradients); `OneDnnLoraLinear` is the same with oneDNN's products. `use_onednn_linears` turns a
model's modules into these in place: same parameters, same state_dict, same peft behaviour
otherwise.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and the linear op used here."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T (K, N) + bias -> (..., N) on oneDNN; weight may be a strided view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _runs_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.layout == torch.strided and x.dim() >= 2
            and x.numel() > 0)


class _OneDnnLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # x is kept only to make the weight's gradient: frozen (LoRA base) layers keep nothing.
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return onednn_mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_mm(grad_out, weight.t())  # (..., N) @ (N, K)
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
        return onednn_mm(x, weight, bias)
    return _OneDnnLinearFunction.apply(x, weight, bias)


class OneDnnLinear(torch.nn.Linear):
    """nn.Linear whose float32 CPU products run on oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


def _lora_forward(x, weight, bias, lora_a, lora_b, scaling, product):
    """y = x W^T + b + s (x A^T) B^T -> (y, a = x A^T): B's product accumulates into y.
    product(x, w, bias=None): F.linear or onednn_mm."""
    a = product(x, lora_a)  # (..., r)
    y = product(x, weight, bias)  # (..., N), contiguous
    y.view(-1, y.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), lora_b.t(), alpha=scaling)
    return y, a


class _FusedLoraFunction(torch.autograd.Function):
    """LoRA over a frozen weight W (N, K): y = x W^T + b + s (x A^T) B^T, A (r, K), B (N, r).

    Backward, with g = dL/dy and gB = g B (M, r):
      dL/dx = g W + s gB A,   dL/dA = s gB^T x,   dL/dB = s g^T (x A^T)
    Against peft's B(A(x)) * s + y, this saves the scaling and the sum (two passes over the
    layer's (M, N) output) and, backward, their gradients and the sum of dL/dx's two parts.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, product):
        y, a = _lora_forward(x, weight, bias, lora_a, lora_b, scaling, product)
        ctx.save_for_backward(x, a, weight, lora_a, lora_b)
        ctx.scaling, ctx.product = scaling, product
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, a, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
        # With oneDNN's product, the thin products g B and gB^T x go there too (faster than MKL at
        # these shapes); g^T a stays on MKL, which was faster for it.
        product = ctx.product
        g_b = product(g, lora_b.t())  # (M, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = product(grad_y, weight.t())  # (..., K), contiguous
            grad_x.view(-1, grad_x.shape[-1]).addmm_(g_b, lora_a, alpha=s)
        grad_a = product(g_b.t(), x.reshape(-1, x.shape[-1]).t()).mul_(s)  # (r, M) @ (M, K)
        grad_b = (g.t() @ a.reshape(-1, a.shape[-1])).mul_(s)  # (N, r)
        return grad_x, None, None, grad_a, grad_b, None, None


@functools.cache
def _lora_linear_classes():
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    class FusedLoraLinear(PeftLoraLinear):
        """peft's LoRA Linear; plain LoRA over a frozen float32 CPU layer runs `_FusedLoraFunction`
        with PyTorch's products, anything else (adapter disabled or merged, dropout, DoRA,
        several adapters) runs peft's forward."""

        product = staticmethod(torch.nn.functional.linear)  # (x, weight, bias=None) -> x W^T + b

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            adapter = self._fused_adapter(x, args, kwargs)
            if adapter is None:
                return super().forward(x, *args, **kwargs)
            base = self.base_layer
            lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
            scaling = self.scaling[adapter]
            if torch.is_grad_enabled() and (x.requires_grad or lora_a.requires_grad or lora_b.requires_grad):
                return _FusedLoraFunction.apply(x, base.weight, base.bias, lora_a, lora_b, scaling, self.product)
            return _lora_forward(x, base.weight, base.bias, lora_a, lora_b, scaling, self.product)[0]

        def _fused_adapter(self, x, args, kwargs) -> str | None:
            if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
                return None
            adapter = self.active_adapters[0]
            base = self.base_layer
            if (adapter not in self.lora_A or adapter in self.lora_variant or not is_plain_linear(base)
                    or not isinstance(self.lora_dropout[adapter], torch.nn.Identity)
                    or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)):
                return None
            lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
            if (lora_a.weight.dtype != torch.float32 or lora_b.weight.dtype != torch.float32
                    or lora_b.bias is not None or not _runs_on_onednn(x, base.weight)):
                return None
            return adapter

    class OneDnnLoraLinear(FusedLoraLinear):
        """FusedLoraLinear with its products on oneDNN."""

        product = staticmethod(onednn_mm)

    return PeftLoraLinear, FusedLoraLinear, OneDnnLoraLinear


def onednn_plan(cpu_matmul: str) -> str | None:
    """Which float32 CPU linears `cpu_matmul` (model.cpu_matmul) puts on oneDNN: "all", "head"
    (the output head only) or None.

    auto decides by the CPU. With AVX-512 all of them, where MKL runs only AVX2 (AMD). Without it
    MKL was faster for the layers' products but oneDNN still won on the wide output head, so the
    head alone moves there (and the LoRA layers are fused on PyTorch's products, which saves the
    adapter's scaling and sum passes). The measurements are in bench/RESULTS.md.
    """
    if cpu_matmul == "torch" or not onednn_available():
        return None
    if cpu_matmul == "onednn" or torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return "all"
    return "head"


def use_onednn_linears(model: torch.nn.Module, which: str = "all") -> int:
    """Turn the model's float32 CPU nn.Linear modules into OneDnnLinear and peft's LoRA Linear
    layers over float32 weights into OneDnnLoraLinear, in place; returns how many modules
    changed. which="head": only the output head (model.get_output_embeddings()) goes on oneDNN,
    and the LoRA layers become FusedLoraLinear (the same fused adapter, PyTorch's products).
    Other subclasses of nn.Linear (quantized layers) are left as they are, and so are the
    float32 adapters of a LoRA layer over bfloat16 weights: those products already run on
    oneDNN, and the adapters' thin products were slower this way (bench/RESULTS.md)."""
    if which not in ("all", "head"):
        raise ValueError(f"which={which!r}: use all or head")
    if not onednn_available():
        return 0
    peft_lora, fused_lora, onednn_lora = _lora_linear_classes()
    lora_layers = [m for m in model.modules() if type(m) is peft_lora]
    float32_lora = [m for m in lora_layers if m.base_layer.weight.dtype == torch.float32]
    if which == "head":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        linears, lora_class = ([head] if _swappable(head) else []), fused_lora
    else:
        keep = {id(adapter) for m in lora_layers if m.base_layer.weight.dtype != torch.float32
                for adapter in (*m.lora_A.values(), *m.lora_B.values())}
        linears, lora_class = [m for m in model.modules() if _swappable(m) and id(m) not in keep], onednn_lora
    for module in linears:
        module.__class__ = OneDnnLinear
    for layer in float32_lora:
        layer.__class__ = lora_class
    return len(linears) + len(float32_lora)


def _swappable(module) -> bool:
    return (type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu")


def is_plain_linear(module: torch.nn.Module) -> bool:
    """nn.Linear or OneDnnLinear: a whole dense weight (not a quantized or wrapped subclass)."""
    return type(module) in (torch.nn.Linear, OneDnnLinear)
