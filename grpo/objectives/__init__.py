"""Training objectives, one module each, chosen once at setup by `objective.name` (as the backends are
by strategy): the loop calls the objective, never tests its name.

- `grpo`: the recipe's policy loss on the rewards' group advantages, with token credit;
- `opd`: on-policy distillation from a frozen teacher (per-token reverse KL), with TOPD/POPD horizons;
- `distil`: DistIL, the policy shown rich feedback as its own teacher (forward cross-entropy).

A new objective is a new module with a class implementing `grpo.objectives.base.Objective` and its
name in `OBJECTIVES` below (and in grpo/runtime/sections.py OBJECTIVES, which the recipe is checked
against before anything loads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.objectives.base import LossSettings, Objective, Targets, loss_settings
from grpo.objectives.distil import DistilRichFeedback
from grpo.objectives.grpo import GrpoObjective
from grpo.objectives.opd import OnPolicyDistillation

OBJECTIVES = {cls.name: cls for cls in (GrpoObjective, OnPolicyDistillation, DistilRichFeedback)}


@dataclass(frozen=True)
class ObjectiveSetup:
    """What an objective may need at setup: this rank's device for a replicated model (a teacher), the
    tokenizer, the training rows, the run's steps."""

    device: torch.device
    tokenizer: object
    train_rows: list[dict]
    total_steps: int


def build_objective(cfg, setup: ObjectiveSetup) -> Objective:
    """The recipe's objective (objective.name), built once."""
    return OBJECTIVES[cfg.objective.name].from_config(cfg, setup)


__all__ = ["OBJECTIVES", "LossSettings", "Objective", "ObjectiveSetup", "Targets", "build_objective",
           "loss_settings"]
