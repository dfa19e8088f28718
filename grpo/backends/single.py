"""The backends without DeepSpeed: one process (`SingleProcess`) and `DataParallel` (train.strategy=ddp).

DataParallel: every rank holds the whole frozen base model on its device (QLoRA's 4-bit base too)
and a replica of the adapter; only the adapter's gradients cross the network, averaged by one
all-reduce per optimizer step, so forward, backward and generation run without any per-layer
gather. An adapter's gradients are a few MB, so overlapping their all-reduce with the backward
pass (what torch's DistributedDataParallel adds) would save little.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch

from grpo import speedups
from grpo.rollout.logprobs import LogProbPass
from grpo.runtime import checkpoint, distributed
from grpo.runtime.distributed import World
from grpo.runtime.model import save_trainable

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
        self.logprobs = LogProbPass(model)
        device = next(model.parameters()).device
        self._reference = None if reference is None else LogProbPass(reference.to(device))

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
    def reference_logprobs(self):
        """The frozen copy (full fine-tuning), or the policy with its LoRA adapter disabled."""
        if self._reference is not None:
            yield self._reference
        else:
            with self.model.disable_adapter():
                yield self.logprobs

    def backward(self, loss: torch.Tensor, last: bool = False) -> None:
        """Accumulate the gradient of one micro-batch's loss (last: the optimizer step's final one)."""
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

    def save_checkpoint(self, output_dir: Path, step: int, keep: int, extra: dict | None = None) -> Path:
        """extra: more of the run's state to resume from (plain Python: the curriculum's)."""
        write_adapter = lambda folder: save_trainable(self.model, folder)  # noqa: E731
        return checkpoint.write_checkpoint(output_dir, step, write_adapter, {**self._trainer_state(), **(extra or {})},
                                           keep)

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

    def save_checkpoint(self, output_dir: Path, step: int, keep: int, extra: dict | None = None) -> Path:
        return _written_by_rank_zero(self.world, lambda: super(DataParallel, self).save_checkpoint(output_dir, step,
                                                                                                    keep, extra))

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


