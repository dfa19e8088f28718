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


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next tokens from (N, V) logits: greedy at temperature 0, else temperature + nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return draw_by_inverse_cdf(probs, generator)


def draw_by_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (N, V) non-negative weights: the first token whose cumulative weight
    exceeds a uniform draw in [0, total). One random number per row, where torch.multinomial
    races V exponential draws per row (bench/RESULTS.md has the timing)."""
    cdf = probs.cumsum(-1)  # (N, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    # A zero-weight token never has cdf > u where its predecessor has not; clamp guards rounding.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sample_by_prompt(logits: torch.Tensor, prompt_of_row: torch.Tensor, params: SamplingParams,
                     generators: list[torch.Generator] | None) -> torch.Tensor:
    """Next tokens (A,) from (A, V) logits; the rows of prompt i draw from generators[i]."""
    if generators is None:
        return sample_tokens(logits, params.temperature, params.top_p, None)
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for prompt in prompt_of_row.unique().tolist():
        rows = (prompt_of_row == prompt).nonzero().squeeze(1)
        tokens[rows] = sample_tokens(logits[rows], params.temperature, params.top_p, generators[prompt])
    return tokens


def next_token_stats(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of the sampling distribution and self-certainty of the raw one, (N, V) -> (N,), (N,).

    Self-certainty (Kang et al. 2025) is KL(U || p) = logsumexp(z) - mean(z) - log V.
    """
    z = logits.float()  # (N, V)
    scaled = z / temperature if temperature not in (0.0, 1.0) else z
    logp = torch.log_softmax(scaled, dim=-1)
    entropy = -torch.linalg.vecdot(torch.softmax(scaled, dim=-1), logp)
    # logsumexp(z) = z_0 - log_softmax(z)_0: fused kernels, no (N, V) temporaries (this runs per token).
    raw_logp = logp if scaled is z else torch.log_softmax(z, dim=-1)
    certainty = (z[:, 0] - raw_logp[:, 0]) - z.mean(-1) - math.log(z.shape[-1])
    return entropy, certainty
