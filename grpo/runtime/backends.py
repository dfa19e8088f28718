"""Backends: one object per way of running a step, with the same methods, so the loop never branches.

A backend owns what differs between one process and DeepSpeed ZeRO-3:
- `scorer`: what the log-prob passes call, `scorer(batch, temperature, shared_prefix) -> (B, T)`;
- `generation()`: the context the sampler runs in (eval mode; ZeRO-3 gathers its shards once);
- `reference_scorer()`: the context that yields the scorer of the frozen reference;
- `backward(loss)` per micro-batch and `step() -> {"grad_norm", "lr"}` per optimizer step;
- `save_checkpoint`, `load_checkpoint`, `save_final_adapter`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from grpo import speedups
from grpo.rollout.logprobs import CompletionScorer
from grpo.runtime import checkpoint, distributed
from grpo.runtime.distributed import World
from grpo.runtime.model import trainable_parameters

log = logging.getLogger(__name__)


class SingleProcess:
    """One process on one device: gradients accumulate in .grad; then clip, step, schedule, zero."""

    def __init__(self, model, reference, optimizer, scheduler, max_grad_norm: float, world: World):
        self.model, self.optimizer, self.scheduler, self.world = model, optimizer, scheduler, world
        self.max_grad_norm = max_grad_norm
        self.params = trainable_parameters(model)
        self.scorer = CompletionScorer(model)
        device = next(model.parameters()).device
        self._reference = None if reference is None else CompletionScorer(reference.to(device))

    @contextlib.contextmanager
    def generation(self):
        """Eval mode while decoding (under gradient checkpointing HF turns the KV cache off in train
        mode), with the sampling speed-ups of this device (grpo/speedups)."""
        self.model.eval()
        try:
            with speedups.sampling_weights(self.model):
                yield self.model
        finally:
            self.model.train()

    @contextlib.contextmanager
    def reference_scorer(self):
        """The frozen copy (full fine-tuning), or the policy with its LoRA adapter disabled."""
        if self._reference is not None:
            yield self._reference
        else:
            with self.model.disable_adapter():
                yield self.scorer

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        )
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm.item(), "lr": lr}

    def save_checkpoint(self, output_dir: Path, step: int, keep: int) -> Path:
        return checkpoint.save_checkpoint(output_dir, step, self.model, self.optimizer, self.scheduler, keep)

    def load_checkpoint(self, path: Path) -> int:
        return checkpoint.load_checkpoint(path, self.model, self.optimizer, self.scheduler)["step"]

    def save_final_adapter(self, directory: Path) -> None:
        checkpoint.save_weights(self.model, directory)


class DeepSpeedZero3:
    """ZeRO-3 across ranks: parameters, gradients and optimizer state sharded by DeepSpeed.

    Each micro-batch's gradients are reduce-scattered as they are made; the engine averages them
    over ranks, clips (gradient_clipping) and steps on the gradient_accumulation_steps-th
    micro-batch. The schedule is the recipe's, advanced here as in one process.
    """

    def __init__(self, model, optimizer, scheduler, ds_config: dict, world: World):
        self.model, self.scheduler, self.world = model, scheduler, world
        self.engine = distributed.deepspeed_engine(CompletionScorer(model), optimizer, ds_config)
        self.scorer = self.engine  # forwards go through the engine: ZeRO-3 does its bookkeeping there
        self.steps_taken = self.engine.global_steps
        log.info("ZeRO-3 over %d ranks; rank 0 holds %s", world.size, distributed.shard_sizes(model))

    @contextlib.contextmanager
    def generation(self):
        """Eval mode, the sharded weights gathered once for the whole decode (grpo/runtime/distributed.py)."""
        self.model.eval()
        try:
            with distributed.full_weights_for_generation(self.engine):
                yield self.model
        finally:
            self.model.train()

    @contextlib.contextmanager
    def reference_scorer(self):
        with self.model.disable_adapter():
            yield self.engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already divided by the micro-batch count
        self.engine.step()  # a no-op until the accumulation boundary

    def step(self) -> dict:
        if self.engine.global_steps != self.steps_taken + 1:
            raise RuntimeError(f"DeepSpeed took {self.engine.global_steps - self.steps_taken} steps for one "
                               "rollout: this rank's micro-batches differ from gradient_accumulation_steps")
        self.steps_taken = self.engine.global_steps
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return {"grad_norm": float(self.engine.get_global_grad_norm()), "lr": lr}

    def save_checkpoint(self, output_dir: Path, step: int, keep: int) -> Path:
        return checkpoint.save_sharded_checkpoint(output_dir, step, self.engine, self.model, self.scheduler,
                                                  self.world, keep)

    def load_checkpoint(self, path: Path) -> int:
        state = checkpoint.load_sharded_checkpoint(path, self.engine, self.scheduler, self.world)
        self.steps_taken = self.engine.global_steps
        return state["step"]

    def save_final_adapter(self, directory: Path) -> None:
        checkpoint.save_gathered_weights(self.model, directory, self.world)


# ---- choosing and starting the backend ----------------------------------------------------------

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[2] / "ds_config.json"


def start_world(cfg, deepspeed_config: str | None) -> tuple[World, torch.device | None, Path | None]:
    """Ranks, this rank's device (None: DeepSpeed places the shards) and the DeepSpeed config, if any.

    DeepSpeed ZeRO-3 runs when `deepspeed_config` is given or more than one process was launched
    (then with ds_config.json unless another file is given).
    """
    from grpo.runtime.model import resolve_source

    world = distributed.world_from_env()
    ds_path = Path(deepspeed_config) if deepspeed_config else (DEFAULT_DS_CONFIG if world.size > 1 else None)
    if ds_path is None:
        return world, torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    distributed.check_recipe(cfg)
    distributed.start(world)
    if world.is_main:  # fetch (and convert) the demo model once, before the other ranks load it
        resolve_source(cfg.model.name, cfg.model.gguf_file)
    distributed.barrier(world)
    return world, None, ds_path


def create_backend(cfg, world: World, ds_path: Path | None, model, reference, optimizer, scheduler):
    """The backend the launch asked for: one process, or ZeRO-3 with the recipe's DeepSpeed config."""
    if ds_path is None:
        return SingleProcess(model, reference, optimizer, scheduler, cfg.train.max_grad_norm, world)
    ds_config = distributed.load_ds_config(ds_path, cfg, world.size, model.config.hidden_size)
    return DeepSpeedZero3(model, optimizer, scheduler, ds_config, world)
