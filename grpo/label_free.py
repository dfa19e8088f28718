"""Label-free rewards for prompts without ground truth (the multi-reward RLIF idea).

Following "Two is better than one" (Joarder et al. 2026, arXiv:2605.22620), two signals the
policy provides about itself are combined, since either alone invites reward hacking:
- answer level, majority voting within the group (as TTRL, Zuo et al. 2025, arXiv:2504.16084):
  the group's most common final answer stands in for the label;
- completion level, self-certainty (Kang et al. 2025, arXiv:2502.18581, used as a reward by
  INTUITOR, Zhao et al. 2025, arXiv:2505.19590): how far each next-token distribution is from
  uniform, KL(U || p), averaged over the completion.
Convention: B = prompts x G, each run of G consecutive completions is one group.
"""

import math
from collections import Counter

import torch


def _check_groups(batch: int, group_size: int) -> None:
    assert group_size >= 2 and batch % group_size == 0, (
        f"label-free rewards need groups of at least 2 and B={batch} a multiple of group_size={group_size}"
    )


def majority_vote_reward(answers: list[str | None], group_size: int) -> list[float]:
    """1.0 for each completion whose answer is its group's most common answer, else 0.0.

    answers: B extracted final answers, None where a completion has none. They are compared as
    given, so normalize them first (e.g. "72", "72.0" and "$72" to one form). None never wins the
    vote and always scores 0; a group with no answer at all scores 0 throughout. A tie for the
    most votes goes to the tied answer that appears first in the group, so the result is
    deterministic (TTRL takes Counter.most_common too).
    """
    _check_groups(len(answers), group_size)
    rewards = []
    for start in range(0, len(answers), group_size):
        group = answers[start : start + group_size]
        votes = Counter(a for a in group if a is not None)  # keeps first-appearance order
        winner = max(votes, key=votes.get) if votes else None  # max keeps the first of equals
        rewards.extend(1.0 if a is not None and a == winner else 0.0 for a in group)
    return rewards


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(per_token.dtype)
    return (per_token * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)


def self_certainty_from_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Self-certainty of each completion from full-vocabulary log-probabilities.

    logprobs: (B, T, V) log-softmax of the policy's logits at each completion position (before any
    top-k/top-p filtering, whose -inf would make it infinite); mask: (B, T).
    Per token KL(U || p_t) = sum_v (1/V) log((1/V) / p_t(v)) = -log V - mean_v log p_t(v) >= 0,
    0 for a uniform guess, large for a confident one. Returns (B,): the mean over unmasked tokens
    (0 for an all-masked row).
    """
    assert logprobs.dim() == 3 and logprobs.shape[:2] == mask.shape, (
        f"logprobs must be (B, T, V) and mask (B, T), got {tuple(logprobs.shape)} and {tuple(mask.shape)}"
    )
    per_token = -math.log(logprobs.shape[-1]) - logprobs.float().mean(dim=-1)  # (B, T)
    return _masked_mean(per_token, mask)


def self_certainty_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two per-position numbers self-certainty needs, so the vocabulary axis can be dropped early.

    logits: (B, T, V), or a (B, T_chunk, V) chunk. Returns (mean_logit, logsumexp), each (B, T),
    in float32; feed them to `self_certainty_from_stats`.
    """
    assert logits.dim() == 3, f"logits must be (B, T, V), got {tuple(logits.shape)}"
    z = logits.float()
    return z.mean(dim=-1), torch.logsumexp(z, dim=-1)


def self_certainty_from_stats(
    mean_logit: torch.Tensor, logsumexp: torch.Tensor, mask: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Self-certainty from per-position logit statistics: same value as `self_certainty_from_logprobs`.

    mean_logit, logsumexp, mask: (B, T), the first two from `self_certainty_stats`.
    Since log p(v) = z_v - logsumexp(z), KL(U || p) = -log V - mean_v(z_v) + logsumexp(z).
    Returns (B,): the mean over unmasked tokens (0 for an all-masked row).
    """
    assert mean_logit.dim() == 2 and mean_logit.shape == logsumexp.shape == mask.shape, (
        f"mean_logit {tuple(mean_logit.shape)}, logsumexp {tuple(logsumexp.shape)} and "
        f"mask {tuple(mask.shape)} must all be (B, T)"
    )
    per_token = -math.log(vocab_size) - mean_logit.float() + logsumexp.float()  # (B, T)
    return _masked_mean(per_token, mask)


def within_group_rank(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each value's rank within its group, scaled to [0, 1]; ties share the average rank.

    values: (B,). Returns (B,) float32: (#smaller + (#equal - 1) / 2) / (G - 1), so the lowest of a
    group scores 0, the highest 1, and a group of equal values 0.5 throughout.
    """
    assert values.dim() == 1, f"values must be (B,), got {tuple(values.shape)}"
    _check_groups(values.shape[0], group_size)
    grouped = values.view(-1, group_size)  # (P, G)
    smaller = (grouped.unsqueeze(1) < grouped.unsqueeze(2)).sum(dim=-1)  # (P, G): j with v_j < v_i
    equal = (grouped.unsqueeze(1) == grouped.unsqueeze(2)).sum(dim=-1)  # (P, G), counts i itself
    return ((smaller + (equal - 1) / 2) / (group_size - 1)).view(-1).float()


def label_free_rewards(
    answers: list[str | None], self_certainty: torch.Tensor, group_size: int, certainty_weight: float = 0.5
) -> torch.Tensor:
    """Reward for data without ground truth: majority vote plus ranked self-certainty.

    answers: B extracted answers (None = none); self_certainty: (B,) from the functions above.
    Returns (B,) float32:  r = majority_vote + certainty_weight * within_group_rank(certainty).
    The certainty enters as its rank in the group, not its raw value: raw KL(U || p) depends on
    the prompt and the vocabulary size, while GRPO only compares completions within a group, so
    the rank carries the whole signal, bounded in [0, 1]. (The paper instead normalizes each
    reward within the group before summing, GDPO-style; the rank solves the same scale
    imbalance with no epsilon and no outlier sensitivity.) With certainty_weight < 1 a completion
    that agrees with the majority always outscores one that does not; the certainty orders the
    completions within each side and still gives a signal when the vote is unanimous or empty.
    """
    assert self_certainty.shape == (len(answers),), (
        f"self_certainty must be (B,)=({len(answers)},), got {tuple(self_certainty.shape)}"
    )
    if certainty_weight < 0:
        raise ValueError(f"certainty_weight must be >= 0, got {certainty_weight}")
    votes = torch.tensor(majority_vote_reward(answers, group_size), dtype=torch.float32)  # (B,)
    return votes + certainty_weight * within_group_rank(self_certainty, group_size)
