"""Drawing the next token: temperature and nucleus sampling, and the per-token statistics logged.

Shapes: N rows, V = vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode max_new_tokens whatever is sampled (benchmarks: a fixed amount of work)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor | None
                  ) -> torch.Tensor:
    """Next tokens (N,) from (N, V) logits: greedy at temperature 0, else temperature + nucleus
    sampling, each row drawn with its uniform in [0, 1) (None: torch's global generator)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], device=probs.device)
    return draw_by_inverse_cdf(probs, uniforms)


def draw_by_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of (N, V) non-negative weights: the first token whose cumulative weight
    exceeds uniforms (N,) in [0, 1) times the row's total. One random number per row, where
    torch.multinomial races V exponential draws per row (bench/RESULTS.md has the timing)."""
    cdf = probs.cumsum(-1)  # (N, V)
    u = uniforms.to(cdf.dtype).unsqueeze(1) * cdf[:, -1:]  # (N, 1)
    # A zero-weight token never has cdf > u where its predecessor has not; clamp guards rounding.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for int64 x in [0, 2^32), without int64 overflow (16-bit halves of c)."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: every input bit moves every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def counter_uniforms(seeds: torch.Tensor, slots: torch.Tensor, position: int) -> torch.Tensor:
    """Uniforms in [0, 1) as a function of (seed, slot, position) alone, (A,) int64 x3 -> (A,) float32.

    Counter-based (a hash of the counters, as Philox is a cipher of them): the number a row draws
    at a position does not depend on which rows share its batch, its rank, or what was drawn
    before, so every row of every prompt samples in one vectorized call and a prompt's completions
    are the same on any number of ranks. 24 random bits per draw (float32's mantissa).
    """
    seed = seeds & _MASK32
    h = _mix32(seed ^ _mix32((seeds >> 32) & _MASK32))
    h = _mix32(h ^ _mul32(slots & _MASK32, 0x9E3779B1))
    h = _mix32(h ^ _mul32(torch.full_like(h, position & _MASK32), 0x27D4EB2F) ^ 0x165667B1)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def next_token_stats(logits: torch.Tensor, temperature: float, tokens: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy of the sampling distribution, self-certainty of the raw one, and the log-prob of
    `tokens` (N,) under softmax(logits / temperature) (the raw logits at temperature 0, before
    top-p: what the trainer's completion_logprobs computes): (N, V) -> (N,), (N,), (N,).

    Self-certainty (Kang et al. 2025) is KL(U || p) = logsumexp(z) - mean(z) - log V.
    """
    z = logits.float()  # (N, V)
    scaled = z / temperature if temperature not in (0.0, 1.0) else z
    logp = torch.log_softmax(scaled, dim=-1)
    entropy = -torch.linalg.vecdot(torch.softmax(scaled, dim=-1), logp)
    # logsumexp(z) = z_0 - log_softmax(z)_0: fused kernels, no (N, V) temporaries (this runs per token).
    raw_logp = logp if scaled is z else torch.log_softmax(z, dim=-1)
    certainty = (z[:, 0] - raw_logp[:, 0]) - z.mean(-1) - math.log(z.shape[-1])
    return entropy, certainty, logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
