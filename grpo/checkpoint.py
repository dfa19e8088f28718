"""Checkpoints: the trainable weights (a peft-loadable adapter) plus everything needed to resume.

Layout: OUTPUT/checkpoints/step-000012/{adapter/, trainer_state.pt}. A checkpoint is written
to a temporary folder and renamed into place, so a run killed while saving leaves the
previous checkpoint intact and resuming never reads a half-written one.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

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


def rng_state(generator: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "sampler": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator.set_state(state["sampler"])


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler,
    generator: torch.Generator,
    keep: int,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then prune to the newest `keep` (0 keeps all)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    partial = root / f".partial-step-{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_weights(model, partial / "adapter")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(generator),
            "extra": extra or {},
        },
        partial / "trainer_state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    if keep > 0:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
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


def load_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns the saved state dict."""
    load_trainable_weights(model, path / "adapter")
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], generator)
    return state
