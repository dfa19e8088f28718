"""The GRPO math: pure functions on tensors, no config objects, no I/O.

- `advantages`: the advantage estimators in a registry (GRPO's group-relative, GDPO's reward-decoupled,
  RLOO's leave-one-out, REINFORCE++-baseline's whitened);
- `loss`: the policy losses in a registry, the k3 KL, the entropy bonus, aggregation by the step's totals,
  the sampler/trainer importance weights, token log-probs;
- `shaping`: reward totals and which tokens train (DAPO's overlong handling, high-entropy tokens);
- `groups`: the (P, G) view of a batch and the "no reward spread" check;
- `sampled_accuracy`: pass@k and maj@k of sampled answers (evaluate.py).
"""

from grpo.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS, ADVANTAGE_SCALES, decoupled_advantages, estimate_advantages, group_advantages,
    register_advantage_estimator,
)
from grpo.algorithm.groups import group_view, has_spread
from grpo.algorithm.loss import (
    AGGREGATIONS, POLICY_LOSSES, ClipRange, PolicyLoss, aggregate_loss, aggregation_counts, clipped_surrogate, kl_k3,
    policy_loss, policy_loss_with_kl, register_policy_loss, token_logprobs,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "ADVANTAGE_SCALES", "AGGREGATIONS", "POLICY_LOSSES", "ClipRange", "PolicyLoss",
    "aggregate_loss", "aggregation_counts", "clipped_surrogate", "decoupled_advantages", "estimate_advantages",
    "group_advantages", "group_view", "has_spread", "kl_k3", "policy_loss", "policy_loss_with_kl",
    "register_advantage_estimator", "register_policy_loss", "token_logprobs",
]
