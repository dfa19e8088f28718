"""The machine's measured GEMM peak, a decode step's ceiling, and the analytic FLOP count of our
GRPO step.

FLOPs are counted for the real tokens only (padding excluded), from the model's config:
  linear   2 x (layer weights + LoRA weights where the adapter runs) per token, all layers
  attention 4 x heads x head_dim x context per token per layer (QK^T and AV; a token's context
           is the positions up to and including its own)
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


def _sorted_seconds(run, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of run(), after one warm-up call, fastest first."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return sorted(times)


def gemm_peak_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> dict:
    """GFLOP/s of an n x n x n matmul at the current torch thread count, through each backend
    this machine has: torch's (MKL for float32) and oneDNN's. The peak is the best of all: on
    AVX-512 AMD CPUs oneDNN runs float32 about 2x faster than MKL (grpo/speedups/onednn_linear.py), and
    the peak must be the machine's, not one library's."""
    from grpo import speedups

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    flops = 2 * n**3
    per_backend = {}
    for name, product in speedups.cpu_linear_backends().items():
        times = _sorted_seconds(lambda: product(a, b), repeats)
        per_backend[name] = {"best_gflops": flops / times[0] / 1e9,
                             "median_gflops": flops / times[len(times) // 2] / 1e9}
    best = max(per_backend, key=lambda k: per_backend[k]["best_gflops"])
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "backend": best, **per_backend[best], "backends": per_backend}


def decode_products_gflops(shape: "Shape", rows: int, repeats: int = 5, dtype=torch.float32) -> dict:
    """GFLOP/s of one decode step's weight products alone, at `rows` rows: every layer's q, k,
    v, o, gate, up, down products and the LM head, each of the two groups through whichever
    backend (torch's or oneDNN's) runs it faster here, the best of `repeats` runs.
    Random weights of the model's shapes, all layers held at once, so they stream from memory
    as in real decoding. Nothing else of a decode step (attention, norms, sampling) is in it,
    and the LoRA adapters are folded while sampling, so this bounds what decoding at this batch
    size can reach with these GEMM libraries."""
    from grpo import speedups

    x_of = {i: torch.randn(rows, i, dtype=dtype) for i, _ in shape.layer_dims()}
    groups = {"layers": [(x_of[i], torch.randn(o, i, dtype=dtype))
                         for _ in range(shape.layers) for i, o in shape.layer_dims()],
              "head": [(torch.randn(rows, shape.hidden, dtype=dtype), torch.randn(shape.vocab, shape.hidden, dtype=dtype))]}
    backends = speedups.cpu_linear_backends()
    seconds, report = 0.0, {"rows": rows}
    for group, products in groups.items():
        flops = 2 * rows * sum(w.numel() for _, w in products)
        times = {name: _sorted_seconds(lambda: [product(x, w) for x, w in products], repeats)[0]
                 for name, product in backends.items()}
        best = min(times, key=times.get)
        seconds += times[best]
        report[group] = {"gflop": flops / 1e9, "backend": best,
                         "gflops_by_backend": {k: flops / t / 1e9 for k, t in times.items()}}
    total = sum(report[g]["gflop"] for g in groups)
    return {**report, "gflop": total, "best_gflops": total / seconds}


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

    def layer_dims(self) -> list[tuple[int, int]]:
        """(in, out) of one layer's q, k, v, o, gate, up, down projections."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden),
                (self.hidden, self.ffn), (self.hidden, self.ffn), (self.ffn, self.hidden)]

    def linear_weights(self) -> tuple[int, int]:
        """(frozen weights, LoRA weights) of all layers' q, k, v, o, gate, up, down projections."""
        dims = self.layer_dims()
        frozen = sum(i * o for i, o in dims) * self.layers
        lora = sum(self.lora_r * (i + o) for i, o in dims) * self.layers
        return frozen, lora


def step_flops(shape: Shape, prompt_lens: list[int], completion_lens: list[int], group_size: int,
               lora_in_generation: bool = False) -> dict:
    """Analytic FLOPs of our step's phases (generation's prompt pass and decode steps, reference
    pass, update forward / backward).

    Only the products that run are counted: the reference pass runs with the adapter off, and
    float32 generation with it folded into the weights (grpo/speedups/lora_fold.py), so neither has LoRA
    products unless lora_in_generation (bfloat16, where it is not folded). A row of n completion
    tokens takes n - 1 decode steps: the prompt pass makes the first token's logits.
    """
    frozen, lora = shape.linear_weights()
    att = 4 * shape.heads * shape.head_dim * shape.layers  # per token per context position
    head = 2 * shape.hidden * shape.vocab  # per token with logits
    prompt_tokens = sum(prompt_lens)
    prompt_att = sum(p * (p + 1) / 2 for p in prompt_lens) * att

    def completion_att(fed: int) -> float:  # each row's first n - fed completion tokens as inputs
        return sum(sum(prompt_lens[row // group_size] + t + 1 for t in range(n - fed))
                   for row, n in enumerate(completion_lens)) * att

    comp_tokens = sum(completion_lens)
    decode_tokens = sum(max(n - 1, 0) for n in completion_lens)
    gen_linear = 2 * (frozen + (lora if lora_in_generation else 0))  # per token
    prefill = prompt_tokens * gen_linear + prompt_att + len(prompt_lens) * head
    decode = decode_tokens * (gen_linear + head) + completion_att(1)
    tokens = prompt_tokens + comp_tokens
    att_fwd = prompt_att + completion_att(0)
    reference = tokens * 2 * frozen + att_fwd + comp_tokens * head
    update_forward = reference + tokens * 2 * lora + comp_tokens * head  # + softmax @ W for the gradient
    backward = tokens * (2 * frozen + 2 * lora) + 2 * att_fwd + tokens * 2 * lora  # activation + LoRA weight grads
    return {"generate": prefill + decode, "generate_prefill": prefill, "generate_decode": decode,
            "ref_logprobs": reference, "update_forward": update_forward, "update_backward": backward,
            "total": prefill + decode + reference + update_forward + backward,
            "prompt_tokens_once": prompt_tokens, "completion_tokens": comp_tokens}
