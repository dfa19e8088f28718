"""What every training objective shares: the loss settings, the targets of a step, the interface.

An objective is chosen once at setup (`objective.name`, grpo/objectives/__init__.py) and the
update calls it, never its name. Each one owns:
- `max_new_tokens(step)`: the tokens sampled at a step (on-policy distillation may sample fewer);
- `prepare(logprobs, batch, rows, plan)`: what it needs frozen before the update (a teacher's
  log-probs, a teacher's top-K distribution), per completion row;
- `pass_options(micro)`: what the trainer's log-prob pass must return besides the log-probs
  (hidden states, the log-probs of given token ids);
- `per_token_loss(out, old_logp, micro)`: its per-token loss (b, T) without the KL term, through
  the policy-loss registry (grpo/algorithm/loss.py), with the per-token values it logs.
The KL to the reference is added in one place (grpo/algorithm/loss.py `with_kl`, called by the update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo.algorithm.loss import ClipRange, PolicyLoss, clip_bounds
from grpo.rollout.batch import RolloutBatch
from grpo.rollout.logprobs import LogProbPlan, TokenLogProbs


@dataclass(frozen=True)
class LossSettings:
    """The recipe's `loss` section as the update and the objectives use it."""

    policy: str  # a name in grpo.algorithm.POLICY_LOSSES
    beta: float
    clip: ClipRange
    aggregation: str
    max_tokens: int  # the completion cap, for Dr. GRPO's constant normalizer
    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss)
    rollout_correction: str = "none"  # none | tis | mis: importance weights for the sampler/trainer mismatch
    rollout_correction_cap: float = 2.0


def loss_settings(cfg) -> LossSettings:
    """LossSettings from a recipe's Config (its `loss` section and the completion cap)."""
    lo = cfg.loss
    clip = ClipRange(*clip_bounds(lo.policy, lo.eps_low, lo.eps_high), lo.dual_clip_c, lo.kl_cov_ratio,
                     lo.kl_cov_coef)
    return LossSettings(lo.policy, lo.beta, clip, lo.aggregation, cfg.rollout.max_new_tokens, lo.entropy_coef,
                        lo.rollout_correction, lo.rollout_correction_cap)


@dataclass
class Targets:
    """What the loss compares against, per completion row (B rows of this rank's rollout, or b of a
    micro-batch once sliced).

    loss_mask (B, T): the tokens that train; advantages (B,): from the rewards (the grpo objective's
    signal); rewards (B,): the weighted total reward (token credit's proxy reads it); old_logp,
    ref_logp (B, T) or None; frozen: the objective's own, e.g. "teacher_logp" (B, T) or
    "teacher_ids"/"teacher_probs" (B, T, K); selected (B, T): the tokens a policy loss chose over the
    whole optimizer step (KL-Cov), or None; sampler_logp (B, T): the sampler's own log-probs (the mismatch
    is measured against them); correction (B, T): loss.rollout_correction's weights, or None.
    """

    loss_mask: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    selected: torch.Tensor | None = None  # (B, T) bool: the policy loss's step selection (KL-Cov), else None
    sampler_logp: torch.Tensor | None = None  # (B, T) the sampler's log-probs of the sampled tokens
    correction: torch.Tensor | None = None  # (B, T) importance weights for the sampler/trainer mismatch, or None

    def select(self, rows: list[int]) -> "Targets":
        """The targets of the rows `rows` (indices, in that order)."""
        index = torch.tensor(rows, dtype=torch.long)

        def pick(x):
            return None if x is None else x[index.to(x.device)]

        return Targets(pick(self.loss_mask), pick(self.advantages), pick(self.rewards), pick(self.old_logp),
                       pick(self.ref_logp), {k: pick(v) for k, v in self.frozen.items()}, pick(self.selected),
                       pick(self.sampler_logp), pick(self.correction))

    def rows(self, rows: slice, width: int, device) -> "Targets":
        """The targets of rows `rows`, completion positions [0, width), on `device`."""
        def cut(x):
            if x is None:
                return None
            return (x[rows] if x.dim() == 1 else x[rows, :width]).to(device)

        return Targets(cut(self.loss_mask), cut(self.advantages), cut(self.rewards), cut(self.old_logp),
                       cut(self.ref_logp), {k: cut(v) for k, v in self.frozen.items()}, cut(self.selected),
                       cut(self.sampler_logp), cut(self.correction))


class Objective:
    """The interface; grpo.py, opd.py and distil.py implement it."""

    name = ""

    def __init__(self, loss: LossSettings, max_new_tokens: int):
        self.loss, self._max_new_tokens = loss, max_new_tokens

    def max_new_tokens(self, step: int) -> int:
        """Tokens sampled per completion at `step` (1-based)."""
        return self._max_new_tokens

    def prepare(self, logprobs, batch: RolloutBatch, rows: list[dict], plan: LogProbPlan) -> dict[str, torch.Tensor]:
        """Frozen targets of this objective for the rollout's B rows (rows: each group's data row).
        logprobs: the policy's log-prob pass (or its DeepSpeed engine)."""
        return {}

    def step_advantages(self, targets: Targets) -> torch.Tensor:
        """The advantages (B,) or (B, T) of the step's rows before any pass, for a policy loss that selects
        tokens over the whole step (KL-Cov); those the loss trains on where the pass does not change them."""
        return targets.advantages

    def pass_options(self, micro: Targets) -> dict:
        """Keyword options of the trainer's log-prob pass for a micro-batch (grpo/rollout/logprobs.py)."""
        return {}

    def per_token_loss(self, out: TokenLogProbs, old_logp: torch.Tensor, micro: Targets,
                       part: RolloutBatch) -> PolicyLoss:
        """The per-token loss (b, T) without the KL term, and the per-token values it logs."""
        raise NotImplementedError
