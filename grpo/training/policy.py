"""The policy to train: seeding, the model with its adapter (and a frozen reference where one is
needed), the optimizer and its schedule, all from the recipe."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch

from grpo import speedups
from grpo.runtime.config import Config, TrainConfig
from grpo.runtime.model import attach_lora, load_model_and_tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed the global RNGs (LoRA dropout, anything a reward draws) from (seed, step, rank).

    Sampling draws from per-prompt generators (training/prompts.py), so with this nothing random
    carries state from one step to the next: a checkpoint needs no RNG state and resumes
    exactly on any number of processes.
    """
    seed_everything(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def build_policy(cfg: Config, device: torch.device | None, adapter_in_compute_dtype: bool = False):
    """The trainable policy, its tokenizer, and a frozen reference copy only when one is needed.

    cfg: resolved for the device (runtime/model.py resolve_for_device). device None leaves the
    weights to DeepSpeed, which places each rank's partition. The reference is the base model
    with the LoRA adapter disabled, so it costs no extra memory; only full fine-tuning with
    beta > 0 keeps a frozen copy.
    """
    m = cfg.model
    unresolved = [f"model.{key}={value!r}" for key, value in
                  (("dtype", m.dtype), ("attn_implementation", m.attn_implementation)) if value == "auto"]
    if unresolved:
        raise ValueError(f"build_policy: {', '.join(unresolved)} is not resolved for a device: pass "
                         "grpo.runtime.model.resolve_for_device(cfg, cuda) as train.py does")
    speedups.configure(device)
    model, tokenizer = load_model_and_tokenizer(
        m.name, gguf_file=m.gguf_file, dtype=m.dtype, load_in_4bit=m.load_in_4bit, device=device,
        attn_implementation=m.attn_implementation,
    )
    reference = None
    if m.use_lora:
        model = attach_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules,
                            adapter_in_compute_dtype)
    elif cfg.loss.beta > 0:  # full fine-tuning: the reference must be a separate frozen copy
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    # The compiled decode step leaves products to Inductor, which cannot lower the oneDNN layers.
    cpu_matmul = "torch" if cfg.rollout.compile else m.cpu_matmul
    speedups.apply(model, device, cpu_matmul)
    if reference is not None:
        speedups.apply(reference, device, cpu_matmul)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer, reference


def make_optimizer(params, t: TrainConfig, total_updates: int):
    """AdamW with linear warmup over `warmup_ratio` of the updates, then cosine decay."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    warmup = int(math.ceil(t.warmup_ratio * total_updates))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_updates)
