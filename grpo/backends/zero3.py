"""The DeepSpeed ZeRO-3 backend (train.strategy=zero3): parameters, gradients and optimizer state
sharded by DeepSpeed; the sharded weights are gathered once per rollout for generation."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch

from grpo.backends.single import _trainable, _written_by_rank_zero
from grpo.rollout.logprobs import LogProbPass
from grpo.runtime import checkpoint, distributed
from grpo.runtime.config import ConfigError
from grpo.runtime.distributed import World
from grpo.runtime.model import save_trainable, trainable_state

log = logging.getLogger(__name__)


class DeepSpeedZero3:
    """ZeRO-3 across ranks: parameters, gradients and optimizer state sharded by DeepSpeed.

    Each micro-batch's gradients are reduce-scattered as they are made; the engine averages them
    over ranks, clips (gradient_clipping) and steps on the gradient_accumulation_steps-th
    micro-batch. The schedule is the recipe's, advanced here as in one process.
    """

    def __init__(self, model, optimizer, scheduler, ds_config: dict, world: World):
        self.model, self.scheduler, self.world = model, scheduler, world
        self.names, self.params = _trainable(model)
        # bitsandbytes re-packs a 4-bit layer's weight in place for its CPU kernel at the first eval
        # forward; under ZeRO-3 that weight is a gathered copy that is dropped afterwards, while the
        # layer's quant state keeps the new layout. ZeRO-3 owns the storage, so no re-packing.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        self.engine = distributed.deepspeed_engine(LogProbPass(model), optimizer, ds_config)
        self.logprobs = self.engine  # forwards go through the engine: ZeRO-3 does its bookkeeping there
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
    def reference_logprobs(self):
        with self.model.disable_adapter():
            yield self.engine

    def backward(self, loss: torch.Tensor, last: bool = False) -> None:
        """One micro-batch's backward; `last` is the optimizer step's boundary. The boundary is set by the
        caller, not counted by DeepSpeed: a step may hold any number of micro-batches (dynamic sampling)."""
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already the step's share (update.py)
        self.engine.step()  # a no-op until the boundary

    def step(self, loss_finite: bool = True) -> dict:
        """DeepSpeed has already stepped at the last micro-batch's boundary; it skips a step whose
        gradient norm is not finite by itself (the norm it reports is then inf or NaN)."""
        if self.engine.global_steps != self.steps_taken + 1:
            raise RuntimeError(f"DeepSpeed took {self.engine.global_steps - self.steps_taken} steps for one "
                               "rollout: this rank's micro-batches differ from gradient_accumulation_steps")
        self.steps_taken = self.engine.global_steps
        lr = self.scheduler.get_last_lr()[0]
        grad_norm = float(self.engine.get_global_grad_norm())
        skipped = not math.isfinite(grad_norm)
        if not skipped:
            self.scheduler.step()
        return {"grad_norm": grad_norm, "lr": lr, "skipped": float(skipped)}

    def _gathered_adapter(self) -> dict[str, torch.Tensor]:
        """The adapter's weights, whole, on every rank (a collective)."""
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters(self.params):
            return trainable_state(self.model)

    def _gathered_optimizer(self) -> dict:
        """The optimizer state by name with each parameter's float32 master (collectives)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        inner = self.engine.optimizer.optimizer  # the recipe's AdamW over DeepSpeed's flat fp32 partitions
        steps = {float(s["step"]) for s in inner.state.values() if "step" in s}
        params = {}
        for name, param in zip(self.names, self.params):
            entry = {"master": safe_get_full_fp32_param(param).cpu().clone()}
            if steps:
                for key in ("exp_avg", "exp_avg_sq"):
                    entry[key] = safe_get_full_optimizer_state(param, key).cpu().clone()
            params[name] = entry
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups]
        return {"step": int(max(steps)) if steps else 0, "hyper": hyper, "params": params}

    def save_checkpoint(self, output_dir: Path, step: int, keep: int, extra: dict | None = None) -> Path:
        adapter, moments = self._gathered_adapter(), self._gathered_optimizer()
        state = {"scheduler": self.scheduler.state_dict(), "world_size": self.world.size,
                 "optimizer_by_name": moments, **(extra or {})}
        write_adapter = lambda folder: save_trainable(self.model, folder, adapter)  # noqa: E731
        return _written_by_rank_zero(self.world,
                                     lambda: checkpoint.write_checkpoint(output_dir, step, write_adapter, state, keep))

    def load_checkpoint(self, path: Path) -> int:
        """Every rank reads the same files and keeps its partition of them."""
        from deepspeed.runtime.zero import GatheredParameters
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        state = checkpoint.read_state(path)
        if "optimizer_by_name" not in state:
            raise ConfigError(f"checkpoint {path} holds a one-process optimizer of an earlier version; resume it "
                              "with one process, or start fresh with --no-resume")
        moments = state["optimizer_by_name"]
        missing = [n for n in self.names if "master" not in moments["params"].get(n, {})]
        if missing:
            raise ConfigError(f"checkpoint {path} has no saved value for {missing[:3]}; it is not this model's")
        with GatheredParameters(self.params, modifier_rank=0):
            if self.world.is_main:
                checkpoint.load_trainable_weights(self.model, Path(path) / "adapter")
        inner = self.engine.optimizer.optimizer
        if len(moments["hyper"]) != len(inner.param_groups):
            raise ConfigError(f"checkpoint {path} has {len(moments['hyper'])} optimizer parameter groups, this run "
                              f"{len(inner.param_groups)}")
        for group, hyper in zip(inner.param_groups, moments["hyper"]):  # the learning rate of the next step
            group.update(hyper)
        if moments["step"]:  # AdamW creates its state lazily: make it, then fill each rank's partition
            for flat in self.engine.optimizer.fp32_partitioned_groups_flat:
                inner.state[flat] = {"step": torch.tensor(float(moments["step"])),
                                     "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        for name, param in zip(self.names, self.params):
            saved = moments["params"][name]
            safe_set_full_fp32_param(param, saved["master"].to(torch.float32))
            if moments["step"]:
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(param, saved[key].to(torch.float32), key)
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_taken = self.engine.global_steps
        return state["step"]

    def save_final_adapter(self, directory: Path) -> None:
        adapter = self._gathered_adapter()
        _written_by_rank_zero(self.world, lambda: save_trainable(self.model, directory, adapter))


