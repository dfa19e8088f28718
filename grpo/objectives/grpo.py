"""The GRPO objective: the recipe's policy loss on the rewards' group advantages (with token credit).

Its signal is `Targets.advantages` (one per completion, made from the rewards before the update,
grpo/training/reward_shaping.py); token credit (grpo/objectives/token_credit.py) may turn them
into one per token. Nothing is frozen besides them.
"""

from __future__ import annotations

from grpo.algorithm.loss import policy_loss
from grpo.objectives.base import Objective, loss_settings
from grpo.objectives.token_credit import TokenCredit


class GrpoObjective(Objective):
    name = "grpo"

    def __init__(self, loss, max_new_tokens: int, credit: TokenCredit):
        super().__init__(loss, max_new_tokens)
        self.credit = credit

    @classmethod
    def from_config(cls, cfg, setup) -> "GrpoObjective":
        return cls(loss_settings(cfg), cfg.rollout.max_new_tokens, TokenCredit(cfg.tokens))

    def pass_options(self, micro) -> dict:
        return {"with_hidden": True} if self.credit.needs_hidden else {}

    def per_token_loss(self, out, old_logp, micro, part):
        advantages = self.credit.scale(micro.advantages, micro.loss_mask, part.completion_ids, micro.rewards,
                                       part.group_size, out.hidden, out.logp)  # (b,) or (b, T)
        return policy_loss(self.loss.policy, out.logp, old_logp, advantages, micro.loss_mask, self.loss.clip,
                           micro.selected)
