"""Checkpoints: the trainable weights (a peft-loadable adapter) plus everything needed to resume,
in one format for every backend and any number of processes.

Layout: OUTPUT/checkpoints/step-000012/
- adapter/: the trainable weights as peft saves them (the whole model without LoRA);
- trainer_state.pt: the step, the learning-rate schedule and the optimizer state by parameter
  name (AdamW's moments and step count; under ZeRO-3 also each parameter's fp32 master copy).

Nothing in it belongs to one rank: the optimizer state is gathered (it is the adapter's, a few
MB), and the global RNGs are reseeded from (seed, step, rank) at every step (training/policy.py),
so a checkpoint resumes exactly under any backend and on any number of processes. Global rank 0
writes it alone: on node-local disks (SageMaker mirrors each instance's checkpoint folder into one
S3 prefix and restores the union to every instance) rank 0's node holds a complete checkpoint, and
the other nodes add nothing that a resume needs.

A checkpoint is written into `.partial-step-N/` and renamed into place, so a run killed while
saving leaves the previous checkpoint intact and resuming never reads a half-written one; a write
that fails (disk full, permission denied) raises `CheckpointWriteError` and leaves the previous
checkpoints as they were.
"""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from grpo.runtime.config import ConfigError

STEP_DIR = re.compile(r"^step-(\d{6,})$")
FORMAT = 2  # trainer_state.pt layout; 1 = the per-rank layout of earlier versions


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message names the folder, the cause and the fix."""


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


def write_checkpoint(output_dir: str | Path, step: int, write_adapter: Callable[[Path], None], state: dict,
                     keep: int) -> Path:
    """Write checkpoint `step` atomically, then prune to the newest `keep` (0 keeps all).

    write_adapter(folder): writes the trainable weights; state: the trainer state (step, schedule,
    optimizer by name). Raises CheckpointWriteError, with the earlier checkpoints untouched.
    """
    root = checkpoint_root(output_dir)
    partial, final = root / f".partial-step-{step:06d}", root / f"step-{step:06d}"
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_adapter(partial / "adapter")
        torch.save({**state, "step": step, "format": FORMAT}, partial / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        raise CheckpointWriteError(
            f"could not write checkpoint step {step} to {partial.parent} ({err}); "
            + (f"the previous checkpoint {previous} is intact. " if previous else "no earlier checkpoint exists. ")
            + "Free disk space or fix the folder's permissions, then run the same command to resume"
        ) from err
    if keep > 0:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict:
    """The trainer state of checkpoint `path`; an unreadable or foreign one is a ConfigError."""
    file = Path(path) / "trainer_state.pt"
    if not file.is_file():
        raise ConfigError(f"checkpoint {path}: no trainer_state.pt; pass a step-NNNNNN folder to --resume, "
                          "or --no-resume to start fresh")
    try:  # weights_only: tensors and plain data only, so a crafted file cannot run code on resume
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"checkpoint {path}: trainer_state.pt holds more than tensors and plain data (loading "
                          "it could run code), so this trainer did not write it; pass a checkpoint written by "
                          "this trainer to --resume, or --no-resume to start fresh") from err
    if state.get("format") != FORMAT and "world_size" in state:
        raise ConfigError(f"checkpoint {path} was written in the per-rank DeepSpeed layout of an earlier "
                          "version, which this version cannot read; start fresh with --no-resume")
    return state


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


# ---- the optimizer state by parameter name -------------------------------------------------------
# {"step": int, "hyper": [{lr, betas, ...} per param group], "params": {name: {"exp_avg", "exp_avg_sq"}}}
# (+ "master": the fp32 value, where the optimizer keeps one apart from the model's parameter).

def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """A torch AdamW's state keyed by the trainable parameters' names (`names` in the optimizer's
    parameter order), so that any backend can restore it."""
    saved = optimizer.state_dict()
    by_index = saved["state"]
    steps = {float(s["step"]) for s in by_index.values() if "step" in s}
    if len(steps) > 1:
        raise ValueError(f"the optimizer's parameters are at different steps {sorted(steps)}")
    params = {names[i]: {k: v.detach().cpu().clone() for k, v in s.items() if k != "step"}
              for i, s in by_index.items()}
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in saved["param_groups"]]
    return {"step": int(steps.pop()) if steps else 0, "hyper": hyper, "params": params}


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: list[str], state: dict) -> None:
    """Restore `optimizer_state_by_name`'s output into a torch optimizer over the parameters `names`."""
    missing = sorted(set(state["params"]) - set(names))
    if missing:
        raise ValueError(f"the checkpoint's optimizer holds parameters this model lacks: {missing[:5]}")
    current = optimizer.state_dict()
    if len(state["hyper"]) != len(current["param_groups"]):
        raise ValueError(f"the checkpoint has {len(state['hyper'])} optimizer parameter groups, this run "
                         f"{len(current['param_groups'])}")
    by_index = {}
    for i, name in enumerate(names):
        if name in state["params"]:
            moments = {k: v for k, v in state["params"][name].items() if k != "master"}
            by_index[i] = {"step": torch.tensor(float(state["step"])), **moments}
    groups = [{**hyper, "params": group["params"]} for hyper, group in zip(state["hyper"], current["param_groups"])]
    optimizer.load_state_dict({"state": by_index, "param_groups": groups})
