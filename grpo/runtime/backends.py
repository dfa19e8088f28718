"""Backends: one object per way of running a step, with the same methods, so the loop never branches.

- `SingleProcess`: one process on one device.
- `DataParallel` (train.strategy=ddp): every rank holds the whole frozen base model on its device
  (QLoRA's 4-bit base too) and a replica of the adapter; only the adapter's gradients cross the
  network, averaged by one all-reduce per optimizer step, so forward, backward and generation run
  without any per-layer gather. An adapter's gradients are a few MB, so overlapping their
  all-reduce with the backward pass (what torch's DistributedDataParallel adds) would save little.
- `DeepSpeedZero3` (train.strategy=zero3, the default): parameters, gradients and optimizer state
  sharded by DeepSpeed; the sharded weights are gathered once per rollout for generation.

Each one owns what differs:
- `scorer`: what the log-prob passes call, `scorer(batch, temperature, shared_prefix) -> (B, T)`;
- `generation()`: the context the sampler runs in, yielding the policy to decode with;
- `reference_scorer()`: the context that yields the scorer of the frozen reference;
- `backward(loss)` per micro-batch and `step(loss_finite) -> {"grad_norm", "lr", "skipped"}` per
  optimizer step: a step whose loss or gradient norm is not finite changes nothing (no optimizer
  or schedule step) and says so with skipped = 1;
- `save_checkpoint`, `load_checkpoint` (one format for all of them: grpo/runtime/checkpoint.py),
  `save_final_adapter`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo import speedups
from grpo.rollout.logprobs import CompletionScorer
from grpo.runtime import checkpoint, distributed
from grpo.runtime.config import Config, ConfigError
from grpo.runtime.distributed import World
from grpo.runtime.model import hidden_size, resolve_source, save_trainable, trainable_state

log = logging.getLogger(__name__)


def _trainable(model) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


class SingleProcess:
    """One process on one device: gradients accumulate in .grad; then clip, step, schedule, zero."""

    def __init__(self, model, reference, optimizer, scheduler, max_grad_norm: float, world: World,
                 fold_lora: bool = True):
        self.model, self.optimizer, self.scheduler, self.world = model, optimizer, scheduler, world
        self.max_grad_norm, self.fold_lora = max_grad_norm, fold_lora
        self.names, self.params = _trainable(model)
        self.scorer = CompletionScorer(model)
        device = next(model.parameters()).device
        self._reference = None if reference is None else CompletionScorer(reference.to(device))

    @contextlib.contextmanager
    def generation(self):
        """Eval mode while decoding (under gradient checkpointing HF turns the KV cache off in train
        mode), with the sampling speed-ups of this device (grpo/speedups)."""
        self.model.eval()
        try:  # folding swaps weights under a compiled decode step: not with rollout.compile
            with speedups.sampling_weights(self.model) if self.fold_lora else contextlib.nullcontext():
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

    def step(self, loss_finite: bool = True) -> dict:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        ).item()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        skipped = self._skip(not (loss_finite and math.isfinite(grad_norm)))
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr, "skipped": float(skipped)}

    def _skip(self, non_finite: bool) -> bool:
        return non_finite

    def _trainer_state(self) -> dict:
        moments = checkpoint.optimizer_state_by_name(self.optimizer, self.names)
        for name, param in zip(self.names, self.params):  # float32 values, whatever the adapter's dtype
            moments["params"].setdefault(name, {})["master"] = param.detach().float().cpu().clone()
        return {"scheduler": self.scheduler.state_dict(), "world_size": self.world.size,
                "optimizer_by_name": moments}

    def save_checkpoint(self, output_dir: Path, step: int, keep: int) -> Path:
        write_adapter = lambda folder: save_trainable(self.model, folder)  # noqa: E731
        return checkpoint.write_checkpoint(output_dir, step, write_adapter, self._trainer_state(), keep)

    def load_checkpoint(self, path: Path) -> int:
        state = checkpoint.read_state(path)
        checkpoint.load_trainable_weights(self.model, Path(path) / "adapter")
        if "optimizer_by_name" in state:
            moments = state["optimizer_by_name"]
            checkpoint.load_optimizer_state_by_name(self.optimizer, self.names, moments)
            with torch.no_grad():  # a ZeRO-3 checkpoint's float32 masters, where the adapter was bfloat16
                for name, param in zip(self.names, self.params):
                    master = moments["params"].get(name, {}).get("master")
                    if master is not None:
                        param.copy_(master.to(param.dtype))
        else:  # format 1 (one process, earlier versions): the optimizer's own state dict
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["step"]

    def save_final_adapter(self, directory: Path) -> None:
        save_trainable(self.model, directory)


class DataParallel(SingleProcess):
    """Replicas on every rank, the trainable parameters' gradients averaged once per step."""

    def __init__(self, model, reference, optimizer, scheduler, max_grad_norm: float, world: World,
                 fold_lora: bool = True):
        super().__init__(model, reference, optimizer, scheduler, max_grad_norm, world, fold_lora)
        with torch.no_grad():  # every replica starts from rank 0's adapter
            for param in self.params:
                torch.distributed.broadcast(param.data, src=0)
        log.info("ddp over %d ranks: the base model replicated, %d trainable tensors averaged per step",
                 world.size, len(self.params))

    def step(self, loss_finite: bool = True) -> dict:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world.size
        for param, part in zip(self.params, flat.split([p.numel() for p in self.params])):
            param.grad = part.view_as(param)
        return super().step(loss_finite)

    def _skip(self, non_finite: bool) -> bool:
        return distributed.any_rank(non_finite, self.world)  # the replicas stay equal: all skip, or none

    def save_checkpoint(self, output_dir: Path, step: int, keep: int) -> Path:
        return _written_by_rank_zero(self.world, lambda: super(DataParallel, self).save_checkpoint(output_dir, step,
                                                                                                    keep))

    def save_final_adapter(self, directory: Path) -> None:
        _written_by_rank_zero(self.world, lambda: save_trainable(self.model, directory))


def _written_by_rank_zero(world: World, write):
    """Rank 0 writes; every rank learns whether it worked, and all raise together if not."""
    result, error = None, None
    if world.is_main:
        try:
            result = write()
        except Exception as err:  # noqa: BLE001 - re-raised below, after every rank has heard of it
            error = err
    if not distributed.all_ranks_agree(error is None, world):
        raise error or checkpoint.CheckpointWriteError("rank 0 could not write the checkpoint (see its log)")
    return result


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

    def save_checkpoint(self, output_dir: Path, step: int, keep: int) -> Path:
        adapter, moments = self._gathered_adapter(), self._gathered_optimizer()
        state = {"scheduler": self.scheduler.state_dict(), "world_size": self.world.size,
                 "optimizer_by_name": moments}
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


# ---- choosing and starting the backend ----------------------------------------------------------

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


def start_world(cfg: Config, deepspeed_config: str | None) -> tuple[Launch, Config]:
    """Join the process group the launch asked for and resolve the recipe for it.

    One process without --deepspeed trains alone. More than one process (or --deepspeed) runs
    train.strategy: zero3 (with ds_config.json unless --deepspeed names another file) or ddp.
    Returns the launch and the recipe as this world runs it (global batch, dtype, attention).
    """
    from grpo.runtime.config import for_world
    from grpo.runtime.model import resolve_for_device

    world = distributed.world_from_env()
    strategy = cfg.train.strategy if (world.size > 1 or deepspeed_config) else "single"
    if deepspeed_config and strategy != "zero3":
        raise ConfigError(f"--deepspeed runs DeepSpeed ZeRO-3 but train.strategy={strategy}; drop --deepspeed "
                          "or set train.strategy=zero3")
    cfg = for_world(cfg, world.size)
    if strategy == "single":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Launch(world, device, strategy), resolve_for_device(cfg, device.type == "cuda")
    distributed.check_recipe(cfg, strategy)
    if strategy == "ddp":
        device = distributed.start_process_group(world)
    else:
        distributed.start(world)
        device = None
    cfg = resolve_for_device(cfg, torch.cuda.is_available())
    if world.is_main:  # fetch (and convert) the demo model once, before the other ranks load it
        resolve_source(cfg.model.name, cfg.model.gguf_file)
    distributed.barrier(world)
    if strategy == "ddp":
        return Launch(world, device, strategy), cfg
    from transformers.integrations import HfDeepSpeedConfig

    ds_path = Path(deepspeed_config) if deepspeed_config else DEFAULT_DS_CONFIG
    ds_config = distributed.load_ds_config(ds_path, cfg, world.size, hidden_size(cfg.model.name, cfg.model.gguf_file))
    return Launch(world, None, strategy, ds_config, HfDeepSpeedConfig(ds_config)), cfg


def create_backend(cfg: Config, launch: Launch, model, reference, optimizer, scheduler):
    """The backend of `launch` around the built policy and its optimizer."""
    max_norm, fold = cfg.train.max_grad_norm, not cfg.rollout.compile
    if launch.strategy == "single":
        return SingleProcess(model, reference, optimizer, scheduler, max_norm, launch.world, fold)
    if launch.strategy == "ddp":
        return DataParallel(model, reference, optimizer, scheduler, max_norm, launch.world, fold)
    return DeepSpeedZero3(model, optimizer, scheduler, launch.ds_config, launch.world)
