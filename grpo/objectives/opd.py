"""On-policy distillation (objective.name=opd): a frozen teacher scores the student's sampled tokens.

The teacher is objective.teacher (else the student's base model) with objective.teacher_adapter
merged in. Every rank holds a whole copy on its device, also under ZeRO-3: it takes no gradient
and no optimizer state, and its forward must not wait on the other ranks' partitions. Its
log-probs of the sampled tokens are frozen before the update; the per-token advantage is the
teacher's log-prob minus the sampling policy's (grpo/research/on_policy_distillation.py), through
the recipe's policy loss. objective.horizon samples fewer tokens (TOPD, POPD).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from grpo import speedups
from grpo.algorithm.loss import policy_loss
from grpo.objectives.base import Objective, loss_settings
from grpo.research.on_policy_distillation import reverse_kl_advantages, rollout_horizon
from grpo.rollout.logprobs import LogProbPass, frozen_logprobs
from grpo.runtime.config import ConfigError
from grpo.runtime.model import load_model_and_tokenizer

log = logging.getLogger(__name__)


class OnPolicyDistillation(Objective):
    name = "opd"

    def __init__(self, loss, max_new_tokens: int, teacher, horizon: tuple[str, float, int]):
        super().__init__(loss, max_new_tokens)
        self.teacher, self.horizon = teacher, horizon  # horizon: (mode, fraction, growth steps)

    @classmethod
    def from_config(cls, cfg, setup) -> "OnPolicyDistillation":
        o = cfg.objective
        teacher = load_teacher(cfg, setup.device, setup.tokenizer)
        return cls(loss_settings(cfg), cfg.rollout.max_new_tokens, teacher,
                   (o.horizon, o.horizon_fraction, o.horizon_growth_steps or setup.total_steps))

    def max_new_tokens(self, step: int) -> int:
        mode, fraction, growth_steps = self.horizon
        return rollout_horizon(mode, self._max_new_tokens, step, fraction, growth_steps)

    def prepare(self, logprobs, batch, rows, plan):
        return {"teacher_logp": frozen_logprobs(self.teacher, batch, plan)}  # (B, T)

    def step_advantages(self, targets):
        return reverse_kl_advantages(targets.old_logp, targets.frozen["teacher_logp"], targets.loss_mask)

    def per_token_loss(self, out, old_logp, micro, part):
        advantages = reverse_kl_advantages(old_logp, micro.frozen["teacher_logp"], micro.loss_mask)  # (b, T)
        result = policy_loss(self.loss.policy, out.logp, old_logp, advantages, micro.loss_mask, self.loss.clip,
                             micro.selected)
        result.indicators["opd/reverse_kl"] = -advantages
        return result


@contextlib.contextmanager
def _outside_zero3():
    """Load whole, not into ZeRO-3 partitions: transformers partitions at load time while a
    DeepSpeed ZeRO-3 config is registered (HfDeepSpeedConfig); unregister it for the duration."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_teacher(cfg, device: torch.device, student_tokenizer) -> LogProbPass:
    """The teacher as a log-prob pass: objective.teacher (else the student's base model), with
    objective.teacher_adapter merged in, frozen, in the recipe's dtype, on `device`.
    A teacher whose vocabulary differs from the student's is an error (its log-probs would be of
    other tokens)."""
    o, m = cfg.objective, cfg.model
    name, gguf = (o.teacher, None) if o.teacher else (m.name, m.gguf_file)
    adapter = Path(o.teacher_adapter) if o.teacher_adapter else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"objective.teacher_adapter={o.teacher_adapter!r}: no adapter_config.json there; give a "
                          "PEFT adapter folder, e.g. a run's final/adapter")
    with _outside_zero3():
        model, tokenizer = load_model_and_tokenizer(name, gguf_file=gguf, dtype=m.dtype, device=device,
                                                    attn_implementation=m.attn_implementation)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError(f"objective.teacher={name!r} has another vocabulary than model.name={m.name!r}; on-policy "
                          "distillation compares log-probs of the same tokens: use a teacher of the same family")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval().requires_grad_(False)
    speedups.apply(model, device, m.cpu_matmul)
    log.info("opd teacher: %s%s on %s", name, f" + adapter {adapter}" if adapter else "", device)
    return LogProbPass(model)
