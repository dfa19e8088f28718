"""GRPO for RL with verifiable rewards, written out by hand in PyTorch.

The package, one concern per subpackage, listed from the bottom layer up (a module imports only from
its own subpackage and the ones listed before it; tests/test_layers.py checks it):
- `grpo.algorithm`: the math, pure functions on tensors (advantage estimators, policy losses, KL, aggregation);
- `grpo.research`: research-frontier methods as pure functions (POW3R, DelTA, label-free, distillation, RELEX);
- `grpo.runtime`: config, model loading, distributed helpers, checkpoints, tracking;
- `grpo.speedups`: device-specific speed-ups behind one entry point, `grpo.speedups.apply`;
- `grpo.rollout`: sampling G completions per prompt, log-prob passes, calling the rewards;
- `grpo.objectives`: what the update trains towards (GRPO, on-policy distillation, DistIL), one module each;
- `grpo.backends`: one process, DDP, DeepSpeed ZeRO-3: generation, the optimizer step, checkpoints;
- `grpo.training`: setup, the step train.py and bench/ call, its stages, logging, evaluation.
"""

from grpo.algorithm import aggregate_loss, clipped_surrogate, group_advantages, kl_k3

__all__ = ["aggregate_loss", "clipped_surrogate", "group_advantages", "kl_k3"]
