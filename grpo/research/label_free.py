"""Label-free rewards for prompts without ground truth (the multi-reward RLIF idea).

Following "Two is better than one" (Joarder et al. 2026, arXiv:2605.22620), two signals the
policy provides about itself are combined, since either alone invites reward hacking:
- answer level, majority voting within the group (as TTRL, Zuo et al. 2025, arXiv:2504.16084):
  the group's most common final answer stands in for the label (the `majority_vote` reward,
  rewards/majority_vote.py);
- completion level, self-certainty (Kang et al. 2025, arXiv:2502.18581, used as a reward by
  INTUITOR, Zhao et al. 2025, arXiv:2505.19590): how far each next-token distribution is from
  uniform, KL(U || p), averaged over the completion (measured per token during the rollout,
  grpo.rollout.sampling.next_token_stats; its within-group rank is added by grpo.training.reward_shaping).
Convention: B = prompts x G, each run of G consecutive completions is one group.
"""

import torch

from grpo.algorithm.groups import group_view


def within_group_rank(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each value's rank within its group, scaled to [0, 1]; ties share the average rank.

    values: (B,). Returns (B,) float32: (#smaller + (#equal - 1) / 2) / (G - 1), so the lowest of a
    group scores 0, the highest 1, and a group of equal values 0.5 throughout.
    """
    assert values.dim() == 1, f"values must be (B,), got {tuple(values.shape)}"
    grouped = group_view(values, group_size, min_size=2)  # (P, G)
    smaller = (grouped.unsqueeze(1) < grouped.unsqueeze(2)).sum(dim=-1)  # (P, G): j with v_j < v_i
    equal = (grouped.unsqueeze(1) == grouped.unsqueeze(2)).sum(dim=-1)  # (P, G), counts i itself
    return ((smaller + (equal - 1) / 2) / (group_size - 1)).view(-1).float()
