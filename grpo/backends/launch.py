"""Starting a run's processes and choosing its backend: the launch (ranks, device, strategy) and the
backend object around the built policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from grpo.backends.single import DataParallel, SingleProcess
from grpo.backends.strategy import resolve_strategy
from grpo.backends.zero3 import DeepSpeedZero3
from grpo.runtime import distributed
from grpo.runtime.config import Config, ConfigError, for_world
from grpo.runtime.distributed import World
from grpo.runtime.model import hidden_size, resolve_for_device, resolve_source

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[2] / "ds_config.json"


@dataclass
class Launch:
    """How this process runs: its rank, its device, the strategy and, under ZeRO-3, DeepSpeed's
    resolved config (with the HfDeepSpeedConfig that makes transformers load the model sharded)."""

    world: World
    device: torch.device | None  # None under ZeRO-3: DeepSpeed places the partitions
    strategy: str  # single | ddp | zero3
    ds_config: dict | None = None
    _hf_deepspeed: object = None  # kept alive: transformers reads it while loading
    why: str = ""  # how the strategy was chosen (logged at start)

    @property
    def replica_device(self) -> torch.device:
        """This rank's device for a model every rank holds whole (a teacher), also under ZeRO-3."""
        if self.device is not None:
            return self.device
        return torch.device("cuda", self.world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def start_world(cfg: Config, deepspeed_config: str | None) -> tuple[Launch, Config]:
    """Join the process group the launch asked for and resolve the recipe for it.

    One process without --deepspeed trains alone. More than one process (or --deepspeed) runs
    train.strategy: zero3 (with ds_config.json unless --deepspeed names another file), ddp, or auto
    (grpo/backends/strategy.py: ddp when the frozen base fits on every device; rank 0 decides, all follow).
    Returns the launch and the recipe as this world runs it (global batch, dtype, attention).
    """
    world = distributed.world_from_env()
    cfg = for_world(cfg, world.size)
    if world.size == 1 and not deepspeed_config:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Launch(world, device, "single"), resolve_for_device(cfg, device.type == "cuda")
    device = distributed.start_process_group(world)  # DeepSpeed, if it runs, takes this group over
    cfg = resolve_for_device(cfg, torch.cuda.is_available())
    if world.is_main:  # fetch (and convert) the demo model once, before the other ranks load it
        resolve_source(cfg.model.name, cfg.model.gguf_file)
    distributed.barrier(world)
    strategy, why = cfg.train.strategy, f"train.strategy={cfg.train.strategy}"
    if strategy == "auto" and deepspeed_config:
        strategy, why = "zero3", "train.strategy=auto: zero3, as --deepspeed was given"
    elif strategy == "auto":
        strategy, why = distributed.from_rank_zero(
            lambda: resolve_strategy(cfg, distributed.local_processes(world), world.local_rank), world)
    if deepspeed_config and strategy != "zero3":
        raise ConfigError(f"--deepspeed runs DeepSpeed ZeRO-3 but train.strategy={strategy}; drop --deepspeed "
                          "or set train.strategy=zero3")
    distributed.check_recipe(cfg, strategy)
    if strategy == "ddp":
        return Launch(world, device, strategy, why=why), cfg
    from transformers.integrations import HfDeepSpeedConfig

    distributed.start(world)
    ds_path = Path(deepspeed_config) if deepspeed_config else DEFAULT_DS_CONFIG
    ds_config = distributed.load_ds_config(ds_path, cfg, world.size, hidden_size(cfg.model.name, cfg.model.gguf_file))
    return Launch(world, None, strategy, ds_config, HfDeepSpeedConfig(ds_config), why), cfg


def create_backend(cfg: Config, launch: Launch, model, reference, optimizer, scheduler):
    """The backend of `launch` around the built policy and its optimizer."""
    max_norm, fold = cfg.train.max_grad_norm, not cfg.rollout.compile
    if launch.strategy == "single":
        return SingleProcess(model, reference, optimizer, scheduler, max_norm, launch.world, fold)
    if launch.strategy == "ddp":
        return DataParallel(model, reference, optimizer, scheduler, max_norm, launch.world, fold)
    return DeepSpeedZero3(model, optimizer, scheduler, launch.ds_config, launch.world)
