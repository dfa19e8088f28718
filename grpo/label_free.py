"""Label-free rewards for prompts without ground truth (the multi-reward RLIF idea).

Following "Two is better than one" (Joarder et al. 2026, arXiv:2605.22620), two signals the
policy provides about itself are combined, since either alone invites reward hacking:
- answer level, majority voting within the group (as TTRL, Zuo et al. 2025, arXiv:2504.16084):
  the group's most common final answer stands in for the label;
- completion level, self-certainty (Kang et al. 2025, arXiv:2502.18581, used as a reward by
  INTUITOR, Zhao et al. 2025, arXiv:2505.19590): how far each next-token distribution is from
  uniform, KL(U || p), averaged over the completion (measured per token during the rollout,
  grpo.rollout.next_token_stats; its within-group rank is added by grpo.shaping).
Convention: B = prompts x G, each run of G consecutive completions is one group.
"""

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
