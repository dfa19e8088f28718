"""GRPO for RL with verifiable rewards, written out by hand in PyTorch.

The package, one concern per subpackage (README.md has the map):
- `grpo.algorithm`: the math, pure functions on tensors (advantages, policy losses, KL, aggregation);
- `grpo.rollout`: sampling G completions per prompt, log-prob passes, calling the rewards;
- `grpo.speedups`: device-specific speed-ups behind one entry point, `grpo.speedups.apply`;
- `grpo.runtime`: config, model loading, backends (one process, DeepSpeed ZeRO-3), checkpoints, tracking;
- `grpo.research`: research-frontier methods (POW3R weighting, DelTA credit, label-free, RELEX);
- `grpo.training`: the stages of one training step, as train.py calls them.
"""

from grpo.algorithm import aggregate_loss, clipped_surrogate, group_advantages, kl_k3

__all__ = ["aggregate_loss", "clipped_surrogate", "group_advantages", "kl_k3"]
