"""Checkpoints: the trainable weights (a peft-loadable adapter) plus everything needed to resume.

Layout: OUTPUT/checkpoints/step-000012/{adapter/, trainer_state.pt}. A checkpoint is written
to a temporary folder and renamed into place, so a run killed while saving leaves the
previous checkpoint intact and resuming never reads a half-written one.

Under ZeRO-3 (grpo/runtime/distributed.py) the same folder holds the adapter gathered and written once
by rank 0, trainer_state.pt (step, schedule) from rank 0, `rng/rank-NNNNN.pt` per rank, and
`deepspeed/`: DeepSpeed's own per-rank optimizer partitions (engine.save_checkpoint). Resuming
it needs the same number of ranks; across nodes, the output dir must be a shared filesystem.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from grpo.runtime.config import ConfigError

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first, as (step, path)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "trainer_state.pt").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_weights(model, directory: Path) -> None:
    """A peft adapter (adapter_model.safetensors + adapter_config.json) or, without LoRA, the full model."""
    model.save_pretrained(directory, safe_serialization=True)


def rng_state() -> dict:
    """Global RNGs (LoRA dropout, rewards); rollout sampling is seeded per prompt and keeps no state."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _paths(output_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(folder being written, published folder) of checkpoint `step`."""
    root = checkpoint_root(output_dir)
    return root / f".partial-step-{step:06d}", root / f"step-{step:06d}"


def _fresh(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)


def _publish(output_dir: str | Path, partial: Path, final: Path, keep: int) -> None:
    """Rename the finished checkpoint into place, then prune to the newest `keep` (0 keeps all)."""
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    if keep > 0:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, keep: int,
                    extra: dict | None = None) -> Path:
    """Write checkpoint `step` atomically, then prune to the newest `keep` (0 keeps all)."""
    partial, final = _paths(output_dir, step)
    _fresh(partial)
    save_weights(model, partial / "adapter")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "extra": extra or {},
        },
        partial / "trainer_state.pt",
    )
    _publish(output_dir, partial, final, keep)
    return final


def save_gathered_weights(model, directory: Path, world) -> None:
    """ZeRO-3: gather the trainable weights (all ranks), rank 0 writes them as `save_weights` does."""
    from deepspeed.runtime.zero import GatheredParameters

    with GatheredParameters([p for p in model.parameters() if p.requires_grad]):
        if world.is_main:
            save_weights(model, directory)


def save_sharded_checkpoint(output_dir: str | Path, step: int, engine, model, scheduler, world, keep: int) -> Path:
    """The ZeRO-3 checkpoint of `step`, written by all ranks into one folder, published by rank 0."""
    from grpo.runtime.distributed import barrier

    partial, final = _paths(output_dir, step)
    if world.is_main:
        _fresh(partial)
    barrier(world)
    engine.save_checkpoint(str(partial / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    (partial / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), partial / "rng" / f"rank-{world.rank:05d}.pt")
    save_gathered_weights(model, partial / "adapter", world)
    if world.is_main:
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "world_size": world.size},
                   partial / "trainer_state.pt")
    barrier(world)  # every rank's files are written before rank 0 publishes the folder
    if world.is_main:
        _publish(output_dir, partial, final, keep)
    barrier(world)
    return final


def load_trainable_weights(model, adapter_dir: Path) -> None:
    """Load saved trainable weights into an already-built model (peft adapter or full model)."""
    from safetensors.torch import load_file

    adapter_file = adapter_dir / "adapter_model.safetensors"
    if adapter_file.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapter_file))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {adapter_dir} has weights this model lacks: {unexpected[:5]}")
        return
    shards = sorted(adapter_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights in checkpoint folder {adapter_dir}")
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    model.load_state_dict(state, strict=False)


def _trainer_state(path: Path) -> dict:
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns the saved state dict."""
    state = _trainer_state(path)
    if "world_size" in state:
        raise ConfigError(f"checkpoint {path} was written under DeepSpeed ZeRO-3 by {state['world_size']} "
                          "rank(s): resume it with --deepspeed and as many ranks, or start fresh with --no-resume")
    load_trainable_weights(model, path / "adapter")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return state


def load_sharded_checkpoint(path: Path, engine, scheduler, world) -> dict:
    """Restore a ZeRO-3 checkpoint: weights and optimizer partitions, schedule, this rank's RNG."""
    state = _trainer_state(path)
    if "world_size" not in state:
        raise ConfigError(f"checkpoint {path} was written without DeepSpeed: resume it without --deepspeed, "
                          "or start fresh with --no-resume")
    if state["world_size"] != world.size:
        raise ConfigError(f"checkpoint {path} was written by {state['world_size']} ZeRO-3 rank(s), this run has "
                          f"{world.size}: resume with as many ranks, or start fresh with --no-resume")
    loaded, _ = engine.load_checkpoint(str(path / "deepspeed"), tag="state", load_module_strict=False,
                                       load_lr_scheduler_states=False)
    if loaded is None:  # DeepSpeed returns (None, None) for missing files instead of raising
        raise FileNotFoundError(f"checkpoint {path}: DeepSpeed found no saved state under {path / 'deepspeed'}")
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(torch.load(path / "rng" / f"rank-{world.rank:05d}.pt", weights_only=False))
    return state
