"""Speed-ups, applied per device through this module: nothing else in the package names a backend.

- `configure(device)`: process-wide settings (TF32 matrix products on CUDA).
- `apply(model, device, cpu_matmul)`: on CPU, float32 linear and LoRA layers run their products
  on oneDNN where the CPU has AVX-512 (only the wide output head elsewhere) and the LoRA
  adapter's product accumulates into its layer's output (onednn_linear.py). On other devices
  nothing changes: PyTorch's own kernels run.
- `head_logprobs(head, hidden, tokens, temperature, mask)`: token log-probs through a frozen LM
  head, their gradient made in the forward pass (head_logprobs.py); None where the head is not
  a plain frozen one.
- `sampling_weights(model)`: while sampling, float32 LoRA adapters folded into a copy of their
  layers' weights (lora_fold.py).
- `onednn_plan(cpu_matmul)`: which layers run on oneDNN here; `cpu_linear_backends()`: the float32
  CPU products this build has, by name (bench/flops.py measures the machine's peak with them).
- `decode_cache(...)`: the decode of G completions per prompt: the prompt's keys and values held
  once per group and read by a grouped-query attention (prefix_attention.py), the generated
  tokens' written in place (kv_cache.py); or, with rollout.compile, a compiled decode step over
  buffers the model keeps per shape (compiled_decode.py).

Each module's docstring says why it is faster; bench/RESULTS.md has the measurements.
"""

from __future__ import annotations

import logging

import torch

from grpo.speedups.compiled_decode import CompiledDecodeCache
from grpo.speedups.decode_cache import GroupDecodeCache
from grpo.speedups.head_logprobs import can_fuse_head, frozen_head_logprobs
from grpo.speedups.lora_fold import lora_folded_for_sampling as sampling_weights
from grpo.speedups.onednn_linear import OneDnnLinear, onednn_available, onednn_mm, onednn_plan, use_onednn_linears

log = logging.getLogger(__name__)

__all__ = ["apply", "configure", "cpu_linear_backends", "decode_cache", "head_logprobs", "onednn_plan",
           "sampling_weights"]


def configure(device: torch.device | str | None) -> None:
    """Process-wide settings for the device the run trains on: on CUDA, float32 matrix products on
    TF32 tensor cores (inputs rounded to a 10-bit mantissa, float32 accumulation: a precision
    training tolerates; bfloat16 recipes do not need it). None (ZeRO-3, where DeepSpeed places the
    weights) follows torch.cuda.is_available()."""
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def apply(model: torch.nn.Module, device: torch.device | str | None, cpu_matmul: str = "auto") -> str | None:
    """Apply the speed-ups of `device` to `model` in place; returns the CPU product plan
    ("all", "head") or None when no layer changed.

    cpu_matmul (model.cpu_matmul): auto | onednn | torch (onednn_linear.onednn_plan).
    """
    if device is None or torch.device(device).type != "cpu":
        return None
    plan = onednn_plan(cpu_matmul)
    if plan and use_onednn_linears(model, plan):
        log.info("CPU float32 products: %s on oneDNN (model.cpu_matmul=%s)",
                 "every linear layer" if plan == "all" else "the output head", cpu_matmul)
        return plan
    return None


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float,
                  mask: torch.Tensor | None) -> torch.Tensor | None:
    """log softmax(head(hidden) / temperature)[tokens] (B, T) through a frozen head, or None when
    `head` is not a plain frozen bias-free linear held whole on this process."""
    if not can_fuse_head(head):
        return None
    return frozen_head_logprobs(hidden, head.weight, tokens, temperature, mask=mask,
                                onednn=isinstance(head, OneDnnLinear))


def decode_cache(model, prompt_cache, prompt_mask: torch.Tensor, group_size: int, max_new_tokens: int,
                 share_prompt_kv: bool = True, compiled: bool = False):
    """The cache and step of a group decode: a CompiledDecodeCache (rollout.compile) or a
    GroupDecodeCache. Both give `rows`, `compacts`, `keep(index)`, `logits(tokens, positions)` and
    `attention_context()`."""
    if compiled:
        return CompiledDecodeCache(model, prompt_cache, prompt_mask, group_size, max_new_tokens)
    return GroupDecodeCache(model, prompt_cache, prompt_mask, group_size, max_new_tokens, share_prompt_kv)


def cpu_linear_backends() -> dict:
    """{name: fn(x (..., K), weight (N, K)) -> x @ weight.T}: each float32 CPU product this build runs,
    "torch" (F.linear: MKL) and, where available, "onednn"."""
    backends = {"torch": torch.nn.functional.linear}
    if onednn_available():
        backends["onednn"] = onednn_mm
    return backends
