"""GRPO for RL with verifiable rewards, written out by hand in PyTorch."""

from grpo.loss import aggregate_loss, clipped_surrogate, group_advantages, kl_k3

__all__ = ["aggregate_loss", "clipped_surrogate", "group_advantages", "kl_k3"]
