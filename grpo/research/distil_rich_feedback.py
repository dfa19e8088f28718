"""DistIL: distributional imitation from rich feedback (Agrawal, Fein-Ashley, Rashidinejad 2026,
"Reinforcement Learning from Rich Feedback with Distributional DAgger", arXiv:2606.05152).

The learner samples; an expert that sees feedback the learner does not (a reference solution, the
failing test and its error) gives a distribution over the next token at every state the learner
visited; the loss is the forward cross-entropy from the expert to the learner, summed over the
rollout's steps:

    L(theta) = E_{y ~ pi_theta} [ sum_t H(sg q(. | x, f, y_<t), pi_theta(. | x, y_<t)) ]

Its gradient has two parts: the local one (each visited state's cross-entropy) and the sequence
one, which the paper stresses: the states visited depend on the earlier tokens, so each sampled
token y_t is credited with the cross-entropy of the states it led to,
grad log pi(y_t) * sum_{t' > t} H_t'. The surrogate here gives exactly that gradient:

    per-token loss_t = H_t + w * sg(C_t - b_t) * log pi(y_t),   C_t = sum_{t' > t} H_t'

The second term is a policy gradient with per-token advantages A_t = -w (C_t - b_t)
(`sequence_advantages`), so it runs through the recipe's policy loss like any other objective's
(grpo/objectives/distil.py); the first is `forward_cross_entropy`.

What was followed: the objective (forward cross-entropy to a stop-gradient, feedback-conditioned
teacher over the learner's own states) and its sequence-level gradient. Decided here, where the
paper's text was not available to us in full:
- the teacher is the policy itself with the feedback in its prompt (self-distillation, the
  paper's black-box expert instantiated the cheapest way), scoring the learner's tokens;
- its distribution is kept as its top_k tokens renormalized (a (B, T, K) tensor instead of
  (B, T, V)); the cross-entropy runs over those K tokens;
- the baseline b_t is the mean of C_t over the rows of the same group that reach position t
  (variance reduction, as GRPO's group mean); w (future_weight) scales the sequence term,
  1 = the paper's gradient, 0 = the local term alone (tokenwise self-distillation).
"""

from __future__ import annotations

import torch

from grpo.algorithm.groups import group_view


def forward_cross_entropy(student_logp_at: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """H(q, pi) per position over the teacher's K tokens: -sum_k q_k log pi_k. (B, T, K) x2 -> (B, T).

    student_logp_at: the student's log-probs of the teacher's K token ids (with gradient);
    teacher_probs: the teacher's probabilities of them, summing to 1 over K (no gradient).
    """
    assert student_logp_at.shape == teacher_probs.shape and student_logp_at.dim() == 3, (
        student_logp_at.shape, teacher_probs.shape)
    return -(teacher_probs.detach() * student_logp_at).sum(dim=-1)


def cost_to_go(cost: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """C_t = sum over t' > t of mask * cost (B, T): what the states after token t cost. Detached."""
    assert cost.shape == mask.shape and cost.dim() == 2, (cost.shape, mask.shape)
    masked = (cost.detach() * mask).float()
    inclusive = masked.flip(1).cumsum(1).flip(1)  # sum over t' >= t
    return inclusive - masked


def position_baseline(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, T): each position's mean of `values` over the rows of its group where mask is 1 there
    (0 where no row of the group reaches it). B = prompts x group_size."""
    assert values.shape == mask.shape and values.dim() == 2, (values.shape, mask.shape)
    m = mask.float()
    grouped_values = group_view(values.float() * m, group_size)  # (P, G, T)
    grouped_mask = group_view(m, group_size)
    mean = grouped_values.sum(dim=1) / grouped_mask.sum(dim=1).clamp(min=1)  # (P, T)
    return mean.repeat_interleave(group_size, dim=0)  # (B, T)


def sequence_advantages(local: torch.Tensor, mask: torch.Tensor, group_size: int,
                        future_weight: float = 1.0) -> torch.Tensor:
    """The sequence term as per-token advantages (B, T): A_t = -w * (C_t - b_t) on counted tokens.

    local: (B, T) each position's cross-entropy H_t (detached here); mask: (B, T). Through a policy
    loss at ratio 1 (DistIL trains on-policy: one update per rollout) the gradient of -A_t * ratio_t
    is w * (C_t - b_t) * grad log pi(y_t), the surrogate's sequence gradient (module docstring): a
    token that led to costlier states is pushed down. 0 everywhere at future_weight 0.
    """
    assert local.shape == mask.shape and local.dim() == 2, (local.shape, mask.shape)
    future = cost_to_go(local, mask)  # (B, T)
    credit = (future - position_baseline(future, mask, group_size)) * mask
    return -future_weight * credit.detach()
