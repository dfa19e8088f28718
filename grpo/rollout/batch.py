"""A rollout batch: N prompts x G sampled completions as padded tensors plus decoded texts.

Shapes: N = prompts, G = group size, B = N * G rows, P = padded prompt length (prompts are
left-padded), T = padded completion length (completions are right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """N prompts x G sampled completions, as padded tensors plus decoded texts."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P) 1 = real prompt token
    completion_ids: torch.Tensor  # (B, T) right-padded with the pad id
    completion_mask: torch.Tensor  # (B, T) float, 1 = generated token (up to EOS / stop string)
    truncated: torch.Tensor  # (B,) bool: hit max_new_tokens without EOS or a stop string
    texts: list[str]  # B completion texts, cut before any stop string
    group_size: int
    token_entropy: torch.Tensor  # (B, T) entropy of the sampling distribution at each token
    token_certainty: torch.Tensor  # (B, T) self-certainty KL(U || p) of the raw next-token distribution
    # (B, T) the sampler's log-prob of each sampled token, log softmax(logits / temperature) (raw logits
    # when greedy), before top-p: the trainer's completion_logprobs of the same tokens, from the decode
    # path's numerics; None where the batch was not sampled here
    sampler_logprobs: torch.Tensor | None = None
    # (B, T) 1 where the model sampled the token, 0 where the completion holds ids the environment appended
    # (an agent's tool results and turn headers: attended to, never trained); None: every token was sampled
    sampled_mask: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return self.prompt_ids.shape[0]

    def prompts_slice(self, start: int, stop: int) -> "RolloutBatch":
        """Prompts [start, stop) with their completions, padding trimmed to the slice's needs."""
        g = self.group_size
        logprobs = self.sampler_logprobs
        pmask = self.prompt_mask[start:stop]
        first = int((pmask.sum(0) > 0).nonzero()[0]) if pmask.any() else 0
        cmask = self.completion_mask[start * g : stop * g]
        width = max(1, int(cmask.sum(1).max().item()))
        return RolloutBatch(
            prompt_ids=self.prompt_ids[start:stop, first:],
            prompt_mask=pmask[:, first:],
            completion_ids=self.completion_ids[start * g : stop * g, :width],
            completion_mask=cmask[:, :width],
            truncated=self.truncated[start * g : stop * g],
            texts=self.texts[start * g : stop * g],
            group_size=g,
            token_entropy=self.token_entropy[start * g : stop * g, :width],
            token_certainty=self.token_certainty[start * g : stop * g, :width],
            sampler_logprobs=None if logprobs is None else logprobs[start * g : stop * g, :width],
            sampled_mask=None if self.sampled_mask is None else self.sampled_mask[start * g : stop * g, :width],
        )

    def select_groups(self, groups: list[int]) -> "RolloutBatch":
        """The prompts with these indices (in this order) and their G completions each."""
        g = self.group_size
        rows = [i * g + j for i in groups for j in range(g)]
        return RolloutBatch(
            prompt_ids=self.prompt_ids[groups], prompt_mask=self.prompt_mask[groups],
            completion_ids=self.completion_ids[rows], completion_mask=self.completion_mask[rows],
            truncated=self.truncated[rows], texts=[self.texts[i] for i in rows], group_size=g,
            token_entropy=self.token_entropy[rows], token_certainty=self.token_certainty[rows],
            sampler_logprobs=None if self.sampler_logprobs is None else self.sampler_logprobs[rows],
            sampled_mask=None if self.sampled_mask is None else self.sampled_mask[rows],
        )


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several (prompts stay left-padded, completions right-padded)."""
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.completion_ids.shape[1] for b in batches)
    cat = lambda name, width, value, left: torch.cat(  # noqa: E731
        [_pad_to(getattr(b, name), width, value, left) for b in batches]
    )
    return RolloutBatch(
        prompt_ids=cat("prompt_ids", p, pad_id, True), prompt_mask=cat("prompt_mask", p, 0, True),
        completion_ids=cat("completion_ids", t, pad_id, False),
        completion_mask=cat("completion_mask", t, 0.0, False),
        truncated=torch.cat([b.truncated for b in batches]),
        texts=[x for b in batches for x in b.texts], group_size=batches[0].group_size,
        token_entropy=cat("token_entropy", t, 0.0, False),
        token_certainty=cat("token_certainty", t, 0.0, False),
        sampler_logprobs=(cat("sampler_logprobs", t, 0.0, False)
                          if all(b.sampler_logprobs is not None for b in batches) else None),
        sampled_mask=_sampled_masks(batches, t),
    )


def _sampled_masks(batches: list[RolloutBatch], width: int) -> torch.Tensor | None:
    """The batches' sampled masks side by side, a batch without one counting every completion token as
    sampled; None when none has one."""
    if all(b.sampled_mask is None for b in batches):
        return None
    masks = [b.completion_mask if b.sampled_mask is None else b.sampled_mask for b in batches]
    return torch.cat([_pad_to(m, width, 0.0, False) for m in masks])


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (N, P) ids and mask, padded on the left so every prompt ends at column P-1."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask
