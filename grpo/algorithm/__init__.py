"""The GRPO math: pure functions on tensors, no config objects, no I/O.

- `advantages`: group-relative advantages (GRPO's, and GDPO's reward-decoupled ones);
- `loss`: the policy losses (a registry), the k3 KL, aggregation, token log-probs;
- `shaping`: reward totals and which tokens train (DAPO's overlong handling, high-entropy tokens);
- `groups`: the (P, G) view of a batch and the "no reward spread" check.
"""

from grpo.algorithm.advantages import ADVANTAGE_SCALES, decoupled_advantages, group_advantages
from grpo.algorithm.groups import group_view, has_spread
from grpo.algorithm.loss import (
    AGGREGATIONS, POLICY_LOSSES, ClipRange, PolicyLoss, aggregate_loss, clipped_surrogate, kl_k3,
    policy_loss_with_kl, register_policy_loss, token_logprobs,
)

__all__ = [
    "ADVANTAGE_SCALES", "AGGREGATIONS", "POLICY_LOSSES", "ClipRange", "PolicyLoss", "aggregate_loss",
    "clipped_surrogate", "decoupled_advantages", "group_advantages", "group_view", "has_spread", "kl_k3", "policy_loss_with_kl",
    "register_policy_loss", "token_logprobs",
]
