"""On-policy distillation (OPD) with a controlled rollout horizon (TOPD, POPD).

OPD (as in Agarwal et al. 2024, GKD, and Thinking Machines' "On-Policy Distillation", 2025): the
student samples, a frozen teacher scores each sampled token, and the per-token reverse KL
estimate logp_student - logp_teacher is the signal. Used as a per-token advantage
A_t = -(logp_student_t - logp_teacher_t) in the usual policy-gradient loss, its gradient at the
sampling policy is E[(logp_s - logp_t) grad logp_s] = grad KL(student || teacher) along the
student's own trajectories: no reward, no final answer needed.

Zhang et al. 2026, "Are Full Rollouts Necessary for On-Policy Distillation?" (arXiv:2605.31490):
since OPD needs no complete trajectory, the rollout can stop early. TOPD samples a fixed fraction
of the full horizon (they report 10% matching full-horizon OPD); POPD grows the horizon during
training (up to 3x faster). Decided here, where their schedule is not followed: POPD grows
linearly from the start fraction at step 1 to the full horizon at `growth_steps`.
"""

from __future__ import annotations

import math

import torch

HORIZONS = ("full", "truncated", "progressive")


def reverse_kl_advantages(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token advantages (B, T) = teacher_logp - student_logp on unmasked tokens, 0 elsewhere.

    student_logp: the sampling policy's log-probs of the sampled tokens (B, T); teacher_logp: the
    teacher's log-probs of the same tokens (B, T), both at the sampling temperature. Detached: the
    signal carries no gradient, the policy loss's ratio does.
    """
    assert student_logp.shape == teacher_logp.shape == mask.shape and mask.dim() == 2, (
        student_logp.shape, teacher_logp.shape, mask.shape)
    gap = (teacher_logp - student_logp).detach().float()
    return torch.where(mask.bool(), gap, torch.zeros_like(gap))


def rollout_horizon(mode: str, max_new_tokens: int, step: int, fraction: float, growth_steps: int) -> int:
    """Tokens sampled at `step` (1-based): the full horizon, a fixed share of it (TOPD), or a share
    growing linearly from `fraction` at step 1 to all of it at step `growth_steps` (POPD).

    Always at least 1 token. e.g. max_new_tokens=64, fraction=0.1: truncated -> ceil(6.4) = 7;
    progressive with growth_steps=5 -> steps 1..5 sample 7, 21, 36, 50, 64 (fractions .1, .325, .55, .775, 1).
    """
    if mode not in HORIZONS:
        raise ValueError(f"horizon {mode!r}: use {', '.join(HORIZONS)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"horizon fraction {fraction}: use (0, 1]")
    if mode == "full":
        return max_new_tokens
    share = fraction
    if mode == "progressive":
        if growth_steps < 1:
            raise ValueError(f"progressive horizon needs growth_steps >= 1, got {growth_steps}")
        progress = min(1.0, (step - 1) / max(growth_steps - 1, 1))
        share = fraction + (1.0 - fraction) * progress
    return max(1, min(max_new_tokens, math.ceil(share * max_new_tokens - 1e-9)))
