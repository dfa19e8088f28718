"""train.strategy=auto: DDP when the frozen base model fits on every device, ZeRO-3 otherwise.

DDP keeps the whole base on every rank and moves only the adapter's gradients, so nothing is
gathered in forward, backward or generation; ZeRO-3 re-gathers every layer's weights for every pass,
which only pays when the base does not fit. "Fits" is a share (BUDGET_SHARE) of the device's memory,
leaving the rest to the KV cache, activations, the adapter and its optimizer state. What ZeRO-3
refuses (full fine-tuning, merging the final model, the compiled decode step) also makes it DDP.
"""

from __future__ import annotations

import os

import torch

from grpo.runtime.config import Config

BUDGET_SHARE = 0.5  # of a device's memory the frozen base may take for DDP
BYTES_PER_PARAMETER = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.5 + 4 / 64}  # NF4: + absmax


def zero3_refusal(cfg: Config) -> str | None:
    """What in the recipe ZeRO-3 cannot run (grpo/runtime/distributed.py check_recipe), or None."""
    from grpo.runtime.config import ConfigError
    from grpo.runtime.distributed import check_recipe

    try:
        check_recipe(cfg, "zero3")
    except ConfigError as err:
        return str(err).split(";")[0]
    return None


def pick_strategy(base_bytes: float, budget_bytes: float, refusal: str | None) -> tuple[str, str]:
    """(strategy, why): ddp when ZeRO-3 cannot run the recipe or the base fits in the budget, else zero3."""
    gib = 2**30
    if refusal:
        return "ddp", f"ZeRO-3 cannot run this recipe ({refusal})"
    if base_bytes <= budget_bytes:
        return "ddp", f"the frozen base ({base_bytes / gib:.2f} GiB) fits in {budget_bytes / gib:.2f} GiB per device"
    return "zero3", f"the frozen base ({base_bytes / gib:.2f} GiB) exceeds {budget_bytes / gib:.2f} GiB per device"


def base_model_bytes(cfg: Config) -> float:
    """The frozen base's size in its storage dtype, from its config alone (built on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from grpo.runtime.model import resolve_source

    source, gguf = resolve_source(cfg.model.name, cfg.model.gguf_file)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source, gguf_file=gguf))
    parameters = sum(p.numel() for p in model.parameters())
    kind = "4bit" if cfg.model.load_in_4bit else cfg.model.dtype
    return parameters * BYTES_PER_PARAMETER[kind]


def device_budget_bytes(local_processes: int, local_rank: int) -> float:
    """BUDGET_SHARE of this rank's GPU, or on CPU of the machine's memory shared by its processes."""
    if torch.cuda.is_available():
        return BUDGET_SHARE * torch.cuda.get_device_properties(local_rank).total_memory
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return BUDGET_SHARE * memory / max(local_processes, 1)


def resolve_strategy(cfg: Config, local_processes: int, local_rank: int) -> tuple[str, str]:
    """(strategy, why) for train.strategy=auto; the run logs both at start."""
    refusal = zero3_refusal(cfg)
    base = 0.0 if refusal else base_model_bytes(cfg)
    strategy, why = pick_strategy(base, device_budget_bytes(local_processes, local_rank), refusal)
    return strategy, f"train.strategy=auto: {strategy}, as {why}"
