"""The machine's measured float32 GEMM peak and the analytic FLOP count of our GRPO step.

FLOPs are counted for the real tokens only (padding excluded), from the model's config:
  linear   2 x (layer weights + LoRA weights) per token, all layers
  attention 4 x heads x head_dim x context per token per layer (QK^T and AV)
  head     2 x hidden x vocab per token whose logits are computed
Forward passes cost linear + attention (+ head where logits are taken). Backward with LoRA
needs only activation gradients for the frozen weights (1x their forward), attention
backward (2x its forward) and LoRA weight gradients (2 x LoRA weights per token). The frozen
LM head makes each token's gradient in the update's forward pass (softmax @ W, a second
head-sized product: grpo/head_logprobs.py), so the head counts 2x in the update forward and 0x
in its backward.
The prompt counts once per group wherever our step shares it (generation, both log-prob passes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def gemm_peak_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> dict:
    """GFLOP/s of an n x n x n matmul at the current torch thread count, through each backend
    this machine has: torch.mm (MKL for float32) and oneDNN. The peak is the best of all: on
    AVX-512 AMD CPUs oneDNN runs float32 about 2x faster than MKL (grpo/onednn_linear.py), and
    the peak must be the machine's, not one library's."""
    from grpo.onednn_linear import _onednn_mm, onednn_available

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    backends = {"torch.mm": lambda: torch.mm(a, b)}
    if onednn_available():
        backends["onednn"] = lambda: _onednn_mm(a, b)
    flops = 2 * n**3
    per_backend = {}
    for name, product in backends.items():
        product()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            product()
            times.append(time.perf_counter() - started)
        times.sort()
        per_backend[name] = {"best_gflops": flops / times[0] / 1e9,
                             "median_gflops": flops / times[len(times) // 2] / 1e9}
    best = max(per_backend, key=lambda k: per_backend[k]["best_gflops"])
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "backend": best, **per_backend[best], "backends": per_backend}


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_r: int

    @classmethod
    def from_config(cls, config, lora_r: int) -> "Shape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads, head_dim, config.vocab_size, lora_r)

    def linear_weights(self) -> tuple[int, int]:
        """(frozen weights, LoRA weights) of all layers' q, k, v, o, gate, up, down projections."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        dims = [(self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden),
                (self.hidden, self.ffn), (self.hidden, self.ffn), (self.ffn, self.hidden)]
        frozen = sum(i * o for i, o in dims) * self.layers
        lora = sum(self.lora_r * (i + o) for i, o in dims) * self.layers
        return frozen, lora


def step_flops(shape: Shape, prompt_lens: list[int], completion_lens: list[int], group_size: int) -> dict:
    """Analytic FLOPs of our step's phases (generation, reference pass, update forward / backward)."""
    frozen, lora = shape.linear_weights()
    lin = 2 * (frozen + lora)  # per token
    att = 4 * shape.heads * shape.head_dim * shape.layers  # per token per context position
    head = 2 * shape.hidden * shape.vocab  # per token with logits
    prompt_tokens = sum(prompt_lens)
    prompt_att = sum(p * (p + 1) / 2 for p in prompt_lens) * att
    comp_tokens = sum(completion_lens)
    comp_att = sum(
        sum(prompt_lens[row // group_size] + t for t in range(n)) for row, n in enumerate(completion_lens)
    ) * att
    lin_fwd = (prompt_tokens + comp_tokens) * lin
    att_fwd = prompt_att + comp_att
    head_fwd = comp_tokens * head
    forward = lin_fwd + att_fwd + head_fwd
    generate = forward + len(prompt_lens) * head  # + the prompt's last-token logits
    backward = (prompt_tokens + comp_tokens) * (2 * frozen + 2 * lora) + 2 * att_fwd \
        + (prompt_tokens + comp_tokens) * 2 * lora  # activation grads + LoRA weight grads
    return {"generate": generate, "ref_logprobs": forward, "update_forward": forward + head_fwd,
            "update_backward": backward, "total": generate + 2 * forward + head_fwd + backward,
            "prompt_tokens_once": prompt_tokens, "completion_tokens": comp_tokens}
