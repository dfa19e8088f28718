"""Log-probs of sampled completions under a policy (the reference, old and current policies).

Each prompt runs through the model once and its KV cache is repeated for the G completions
(`batch_repeat_interleave`), since the pass runs all completion tokens at once.

Shapes: N = prompts, G = group size, B = N * G rows, T = padded completion length, H = hidden.
"""

from __future__ import annotations

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


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` of a policy as a module's forward.

    DeepSpeed wraps this module: ZeRO-3 does its per-pass bookkeeping (gradient accumulation,
    backward prologue, parameter trace) only for forwards that go through its engine.
    """

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: RolloutBatch, temperature: float, shared_prefix: bool) -> torch.Tensor:
        return completion_logprobs(self.policy, batch, temperature, shared_prefix)


def completion_logprobs(
    model,
    batch: RolloutBatch,
    temperature: float = 1.0,
    shared_prefix: bool = True,
    chunk_rows: int = 4,
) -> torch.Tensor:
    """Log-probs (B, T) of the sampled completion tokens (with a frozen head: 0 on the padding
    after a finished completion, which every loss masks out).

    shared_prefix=True runs each prompt through the model once and repeats its KV cache for
    the G completions (gradients flow back through the one prompt pass); False runs the
    concatenated prompt+completion rows, the textbook way (used to test the first).
    (B, T, V) logits never exist at once. A frozen head (LoRA) runs 128 tokens at a time and
    makes each token's gradient in its forward pass (grpo/speedups/head_logprobs.py). Another head (full
    fine-tuning, or a ZeRO-3 shard) runs `chunk_rows` rows at a time and is re-computed in the
    backward pass. The re-computation is reentrant: ZeRO-3
    frees the head's weight after each forward and fetches it again only through module hooks,
    which a non-reentrant re-computation (run inside the backward of the head) comes too late for.
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

    # Padding after a finished completion gets no logits (0 there, as the loss masks it anyway).
    fused = speedups.head_logprobs(head, hidden, completion_ids, temperature, batch.completion_mask.to(device))
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
