"""Log-prob passes: log-probs of sampled completions under a policy (the reference, old and current
policies, a teacher), one micro-batch at a time.

Each prompt runs through the model once and its KV cache is repeated for the G completions
(`batch_repeat_interleave`), since the pass runs all completion tokens at once. `LogProbPass` is
that pass as a module (what the backends hand the update); `frozen_logprobs` runs it under frozen
weights over a whole rollout, micro-batch by micro-batch.

Shapes: N = prompts, G = group size, B = N * G rows, T = padded completion length, H = hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from grpo import speedups
from grpo.algorithm.loss import token_logprobs
from grpo.rollout.batch import RolloutBatch
from grpo.runtime.hf_compat import cache_argument, returned_cache


def _decoder_and_head(model):
    """The transformer body (returns normed hidden states) and the LM head, through peft wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _chunk_logprobs(head, hidden, tokens, temperature):
    return token_logprobs(head(hidden) / temperature, tokens, chunk_rows=hidden.shape[0])  # (b, T)


@dataclass
class TokenLogProbs:
    """What a log-prob pass returns.

    logp (B, T): the sampled tokens' log-probs; and only when asked for: hidden (B, T, H) detached:
    the final hidden states feeding the head (DelTA's token-gradient features); gathered (B, T, K): log-probs of the
    token ids asked for (DistIL's teacher tokens); topk_ids (B, T, K) and topk_probs (B, T, K):
    the K most likely tokens and their probabilities renormalized over those K (a teacher); entropy
    (B, T): the policy's entropy at each position, with its gradient (the entropy bonus).
    """

    logp: torch.Tensor
    hidden: torch.Tensor | None = None
    gathered: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class LogProbPass(torch.nn.Module):
    """`completion_logprobs_with` of a policy as a module's forward, returning TokenLogProbs.

    DeepSpeed wraps this module: ZeRO-3 does its per-pass bookkeeping (gradient accumulation,
    backward prologue, parameter trace) only for forwards that go through its engine.
    """

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: RolloutBatch, temperature: float, shared_prefix: bool,
                with_hidden: bool = False, gather_ids: torch.Tensor | None = None, top_k: int = 0,
                with_entropy: bool = False) -> "TokenLogProbs":
        return completion_logprobs_with(self.policy, batch, temperature, shared_prefix, with_hidden, gather_ids,
                                        top_k, with_entropy)


def completion_hidden(model, batch: RolloutBatch, shared_prefix: bool = True):
    """(hidden (B, T, H) that predicts each completion token, the LM head, completion ids on the device).

    shared_prefix=True runs each prompt through the model once and repeats its KV cache for
    the G completions (gradients flow back through the one prompt pass); False runs the
    concatenated prompt+completion rows, the textbook way (used to test the first).
    """
    decoder, head = _decoder_and_head(model)
    device = next(model.parameters()).device
    g = batch.group_size
    prompt_ids, prompt_mask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
    completion_ids = batch.completion_ids.to(device)
    num_rows, width = completion_ids.shape
    prompt_len = prompt_mask.sum(1).repeat_interleave(g)  # (B,)
    padded = not bool(prompt_mask.all())

    if shared_prefix:
        out = decoder(
            input_ids=prompt_ids,
            attention_mask=prompt_mask if padded else None,
            position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True,
        )
        first = out.last_hidden_state[:, -1:].repeat_interleave(g, dim=0)  # (B, 1, H)
        # With T == 1 the completion pass still runs, on a token whose output is dropped: under
        # ZeRO-3 every rank must make the same module calls (each one gathers parameters).
        rest_ids = completion_ids[:, :-1] if width > 1 else completion_ids  # (B, max(T-1, 1))
        cache = returned_cache(out)
        cache.batch_repeat_interleave(g)
        attention = None
        if padded:
            rep = prompt_mask.repeat_interleave(g, dim=0)
            attention = torch.cat([rep, rep.new_ones(rest_ids.shape)], dim=1)
        positions = prompt_len.unsqueeze(1) + torch.arange(rest_ids.shape[1], device=device)
        rest = decoder(
            input_ids=rest_ids,
            attention_mask=attention,
            position_ids=positions,
            **cache_argument(decoder, cache),
            use_cache=True,
        ).last_hidden_state  # (B, max(T-1, 1), H)
        hidden = torch.cat([first, rest], dim=1)[:, :width]  # (B, T, H)
    else:
        rep_ids = prompt_ids.repeat_interleave(g, dim=0)
        rep_mask = prompt_mask.repeat_interleave(g, dim=0)
        ids = torch.cat([rep_ids, completion_ids], dim=1)  # (B, P + T)
        mask = torch.cat([rep_mask, rep_mask.new_ones(num_rows, width)], dim=1)
        out = decoder(
            input_ids=ids,
            attention_mask=mask if padded else None,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        )
        p = prompt_ids.shape[1]
        hidden = out.last_hidden_state[:, p - 1 : p - 1 + width]  # (B, T, H): predicts each completion token
    return hidden, head, completion_ids


def _head_logprobs(head, hidden, completion_ids, temperature, mask, chunk_rows):
    # Padding after a finished completion gets no logits (0 there, as the loss masks it anyway).
    fused = speedups.head_logprobs(head, hidden, completion_ids, temperature, mask)
    if fused is not None:
        return fused
    logps = []
    for h, t in zip(hidden.split(chunk_rows), completion_ids.split(chunk_rows)):
        if torch.is_grad_enabled():
            logps.append(torch.utils.checkpoint.checkpoint(
                _chunk_logprobs, head, h, t, temperature, use_reentrant=True))
        else:
            logps.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(logps)


def completion_logprobs(
    model,
    batch: RolloutBatch,
    temperature: float = 1.0,
    shared_prefix: bool = True,
    chunk_rows: int = 4,
) -> torch.Tensor:
    """Log-probs (B, T) of the sampled completion tokens (with a frozen head: 0 on the padding
    after a finished completion, which every loss masks out).

    The hidden states come from `completion_hidden`. (B, T, V) logits never exist at once. A frozen
    head (LoRA) runs 128 tokens at a time and makes each token's gradient in its forward pass
    (grpo/speedups/head_logprobs.py). Another head (full fine-tuning, or a ZeRO-3 shard) runs
    `chunk_rows` rows at a time and is re-computed in the backward pass. The re-computation is
    reentrant: ZeRO-3 frees the head's weight after each forward and fetches it again only through
    module hooks, which a non-reentrant re-computation (run inside the backward of the head) comes
    too late for.
    """
    hidden, head, completion_ids = completion_hidden(model, batch, shared_prefix)
    mask = batch.completion_mask.to(completion_ids.device)
    return _head_logprobs(head, hidden, completion_ids, temperature, mask, chunk_rows)


def _chunk_full_softmax(head, hidden, tokens, gather_ids, temperature, with_entropy: bool):
    """One chunk through the head with its whole softmax: the sampled tokens' log-probs (b, T), those of
    gather_ids (b, T, K) (an empty tensor without them) and the entropy at each position (b, T) (empty
    unless asked). Empty tensors, not None, as the re-computing checkpoint returns tensors."""
    logits = head(hidden).float() / temperature  # (b, T, V)
    norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # (b, T, 1)
    picked = torch.gather(logits, 2, tokens.unsqueeze(-1)).squeeze(-1) - norm.squeeze(-1)  # (b, T)
    gathered = torch.gather(logits, 2, gather_ids) - norm if gather_ids.numel() else gather_ids.float()
    entropy = picked.new_empty(0)
    if with_entropy:  # H = logsumexp(z) - sum softmax(z) z
        entropy = norm.squeeze(-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # (b, T)
    return picked, gathered, entropy


def _chunk_top_k(head, hidden, temperature, k):
    logits = head(hidden).float() / temperature  # (b, T, V)
    top = torch.topk(logits, k, dim=-1)  # (b, T, K)
    return top.indices, torch.softmax(top.values, dim=-1)


def completion_logprobs_with(model, batch: RolloutBatch, temperature: float = 1.0, shared_prefix: bool = True,
                             with_hidden: bool = False, gather_ids: torch.Tensor | None = None, top_k: int = 0,
                             with_entropy: bool = False, chunk_rows: int = 4) -> TokenLogProbs:
    """`completion_logprobs` plus what the objectives ask for (see TokenLogProbs).

    gather_ids (B, T, K): token ids whose log-probs to return with their gradient; with_entropy: the
    policy's entropy at each position (B, T), with its gradient (the entropy bonus). Both need the full
    softmax, so they run the re-computing head path, `chunk_rows` rows at a time.
    top_k > 0: the K most likely tokens at each position and their renormalized probabilities,
    under no_grad (a teacher's distribution).
    """
    hidden, head, completion_ids = completion_hidden(model, batch, shared_prefix)
    mask = batch.completion_mask.to(completion_ids.device)
    out = TokenLogProbs(logp=torch.empty(0), hidden=hidden.detach() if with_hidden else None)
    if gather_ids is None and not with_entropy:
        out.logp = _head_logprobs(head, hidden, completion_ids, temperature, mask, chunk_rows)
    else:
        if gather_ids is None:
            gather_ids = completion_ids.new_empty((*completion_ids.shape, 0))
        gather_ids = gather_ids.to(completion_ids.device)
        assert gather_ids.shape[:2] == completion_ids.shape, (gather_ids.shape, completion_ids.shape)
        chunks = []
        for h, t, ids in zip(hidden.split(chunk_rows), completion_ids.split(chunk_rows), gather_ids.split(chunk_rows)):
            if torch.is_grad_enabled():
                chunks.append(torch.utils.checkpoint.checkpoint(_chunk_full_softmax, head, h, t, ids, temperature,
                                                                with_entropy, use_reentrant=True))
            else:
                chunks.append(_chunk_full_softmax(head, h, t, ids, temperature, with_entropy))
        out.logp = torch.cat([c[0] for c in chunks])
        out.gathered = torch.cat([c[1] for c in chunks]) if gather_ids.shape[-1] else None
        out.entropy = torch.cat([c[2] for c in chunks]) if with_entropy else None
    if top_k:
        with torch.no_grad():
            parts = [_chunk_top_k(head, h, temperature, top_k) for h in hidden.detach().split(chunk_rows)]
        out.topk_ids = torch.cat([ids for ids, _ in parts])
        out.topk_probs = torch.cat([probs for _, probs in parts])
    return out


# ---- passes over a whole rollout, micro-batch by micro-batch ---------------------------------------


@dataclass(frozen=True)
class LogProbPlan:
    """How the log-prob passes run: the sampling temperature, micro-batch size, prompt reuse."""

    temperature: float
    prompts_per_micro_batch: int
    shared_prefix: bool = True  # one prompt pass per group (False under gradient checkpointing)


def micro_batches(batch: RolloutBatch, prompts_per_micro_batch: int):
    """(first row, sub-batch) of each micro-batch, in order; a prompt's G rows stay together."""
    for start in range(0, batch.num_prompts, prompts_per_micro_batch):
        stop = min(start + prompts_per_micro_batch, batch.num_prompts)
        yield start * batch.group_size, batch.prompts_slice(start, stop)


def pass_device(logprobs) -> torch.device:
    """The device a log-prob pass (a LogProbPass, or the DeepSpeed engine wrapping one) computes on."""
    return next(logprobs.parameters()).device


@torch.no_grad()
def frozen_logprobs(logprobs, batch: RolloutBatch, plan: LogProbPlan) -> torch.Tensor:
    """Log-probs (B, T) under frozen weights: the reference (the caller disables the adapter, or
    passes the frozen copy's pass), the pre-update policy (old log-probs) or a teacher. On the
    pass's device. logprobs: a LogProbPass, or the DeepSpeed engine wrapping one.
    """
    out = torch.zeros(batch.completion_ids.shape, device=pass_device(logprobs))
    for row, part in micro_batches(batch, plan.prompts_per_micro_batch):
        logp = logprobs(part, plan.temperature, plan.shared_prefix).logp
        out[row : row + logp.shape[0], : logp.shape[1]] = logp.float()
    return out
