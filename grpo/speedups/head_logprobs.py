"""Token log-probs through a frozen LM head, with their gradient made in the forward pass.

logp_t = log softmax(h_t W^T / tau)[y_t] is one number per token that depends on h_t alone, so
its gradient with respect to h_t is one H-vector:

    d logp_t / d h_t = (W[y_t] - softmax(h_t W^T / tau) W) / tau

The forward pass computes it chunk by chunk while a chunk's (tokens, V) logits exist, and keeps
only that (B, T, H) gradient; the backward pass multiplies it by the incoming (B, T) gradient. The
usual way (autograd through a re-computed head, rollout.py's fallback) runs the V-wide head three
times (forward, re-computation, backward) and several element-wise passes over (B, T, V) floats;
this runs it twice (the logits, then softmax @ W) and the element-wise work once.

Only for a frozen head without bias (LoRA leaves the head frozen): with a trainable head the
weight's gradient needs the (B, T, V) softmax again, which is what the re-computation is for.
"""

from __future__ import annotations

import torch

from grpo.speedups.onednn_linear import is_plain_linear, onednn_linear


def can_fuse_head(head: torch.nn.Module) -> bool:
    """A plain frozen bias-free Linear whose weight is held whole on this process.

    ZeRO-3 shards parameters and gathers them only inside module calls (`ds_id` marks them),
    so its heads take the re-computing path.
    """
    return (is_plain_linear(head) and head.bias is None and not head.weight.requires_grad
            and not hasattr(head.weight, "ds_id"))


def _head_pass(hidden, weight, tokens, temperature, chunk_tokens, with_grad, onednn=False):
    """hidden (N, H), tokens (N,) -> log-probs (N,) float32 and, if with_grad, d logp / d hidden (N, H).

    A chunk's (log-)softmax goes into a reused float32 buffer written with out=: fresh (chunk, V)
    tensors, as torch.logsumexp makes inside, cost page faults on every chunk. With onednn the
    float32 CPU products run on oneDNN (onednn_linear.py), whose logits are a fresh tensor:
    chunks of 128 tokens (25 MB at V = 49,152) are reused by malloc, where larger ones are mapped
    and faulted in anew (bench/RESULTS.md has both measurements).
    """
    n, vocab = tokens.shape[0], weight.shape[0]
    product = onednn_linear if onednn else torch.nn.functional.linear
    logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
    grads = torch.empty_like(hidden) if with_grad else None
    softmax_buffer = torch.empty(min(chunk_tokens, n), vocab, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], tokens[start : start + chunk_tokens]  # (c, H), (c,)
        rows = slice(start, start + h.shape[0])
        out = softmax_buffer[: h.shape[0]]  # (c, V)
        logits = product(h, weight).float()  # (c, V)
        if temperature != 1.0:
            logits.div_(temperature)
        torch.log_softmax(logits, dim=-1, out=out)
        logps[rows] = out.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if with_grad:
            probs = torch.softmax(logits, dim=-1, out=out).to(weight.dtype)
            grads[rows] = (weight[y] - product(probs, weight.t())) / temperature  # (c, V) @ (V, H)
    return logps, grads


class _FrozenHeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk_tokens, onednn):
        logps, grads = _head_pass(hidden, weight, tokens, temperature, chunk_tokens, True, onednn)
        ctx.save_for_backward(grads)
        return logps

    @staticmethod
    def backward(ctx, grad_logp):
        (grad_per_token,) = ctx.saved_tensors  # (N, H)
        grad_hidden = grad_per_token * grad_logp.unsqueeze(-1).to(grad_per_token.dtype)
        return grad_hidden, None, None, None, None, None


def frozen_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0, chunk_tokens: int = 128,
                         mask: torch.Tensor | None = None, onednn: bool = False) -> torch.Tensor:
    """log softmax(hidden @ weight.T / temperature)[tokens], float32, differentiable in hidden.

    hidden (B, T, H); weight (V, H), frozen; tokens (B, T) int; mask (B, T), optional: only
    its nonzero positions are computed (completion padding is skipped), the others are 0 with
    no gradient. Returns (B, T).
    onednn: float32 CPU products on oneDNN (grpo/onednn_linear.py), as the head's own layer does.
    Peak extra memory: two (chunk_tokens, V) float32 blocks. The gradient is only made when
    autograd will ask for it (grad enabled and hidden requires it).
    """
    assert hidden.shape[:2] == tokens.shape and hidden.shape[-1] == weight.shape[1], (
        hidden.shape, tokens.shape, weight.shape)
    if weight.requires_grad:
        raise ValueError("frozen_head_logprobs gives no gradient to the head's weight; it must be frozen")
    flat_hidden, flat_tokens = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)  # (N, H), (N,)
    if mask is not None:
        assert mask.shape == tokens.shape, (mask.shape, tokens.shape)
        kept = mask.reshape(-1).nonzero().squeeze(1)  # (n,)
        flat_hidden, flat_tokens = flat_hidden.index_select(0, kept), flat_tokens.index_select(0, kept)
    if flat_tokens.numel() == 0:  # nothing to score: zeros that still lead back to hidden for backward()
        return hidden.float().sum(-1) * 0
    if torch.is_grad_enabled() and hidden.requires_grad:
        logps = _FrozenHeadLogprobs.apply(flat_hidden, weight, flat_tokens, temperature, chunk_tokens, onednn)
    else:
        logps, _ = _head_pass(flat_hidden, weight, flat_tokens, temperature, chunk_tokens, False, onednn)
    if mask is not None:
        logps = logps.new_zeros(tokens.numel()).scatter(0, kept, logps)
    return logps.view(tokens.shape)
