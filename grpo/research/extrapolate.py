"""Trajectory extrapolation of LoRA adapters, after RELEX (Wei et al. 2026, arXiv:2605.21468).

RELEX observes that RLVR weight trajectories are nearly rank-1 and that the position along that
one direction grows nearly linearly with the step. So from the first k checkpoints one can fit
the direction and the line, and write down a later checkpoint without training to it. RELEX
works on full weights; we apply the same recipe to each tensor of a LoRA adapter (A and B
separately, as saved by peft), with deltas taken from the first snapshot given.

`extrapolate_trajectory` and `trajectory_error` are pure; the two I/O functions read and write
adapters in the run layout `RUN_DIR/checkpoints/step-{N:06d}/adapter/` of peft's
`save_pretrained` (`adapter_model.safetensors` + `adapter_config.json`).
"""

import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def _extrapolate_tensor(history: torch.Tensor, steps: torch.Tensor, target_step: float) -> torch.Tensor:
    """history: (k, D) float64 flattened snapshots, steps: (k,) float64. Returns (D,) float64."""
    anchor = history[0]  # (D,)
    deltas = history - anchor  # (k, D); row 0 is zero
    if not deltas.any():
        return anchor.clone()
    direction = torch.linalg.svd(deltas, full_matrices=False).Vh[0]  # (D,) unit, top right-singular vector
    coords = deltas @ direction  # (k,) position of each snapshot along the direction
    centered_steps = steps - steps.mean()
    slope = (centered_steps * (coords - coords.mean())).sum() / (centered_steps**2).sum()
    intercept = coords.mean() - slope * steps.mean()
    return anchor + (intercept + slope * target_step) * direction


def extrapolate_trajectory(
    snapshots: list[dict[str, torch.Tensor]], steps: list[int], target_step: int
) -> dict[str, torch.Tensor]:
    """Predict the weights at `target_step` from k >= 2 snapshots taken at increasing `steps`.

    snapshots: k dicts name -> tensor, same names and shapes in each (e.g. LoRA A (r, d_in) and
    B (d_out, r) matrices). Returns a new dict of the same names, shapes and dtypes. Per tensor:
      1. M = stack(flatten(W_i) - flatten(W_0)) for i = 0..k-1, shape (k, D) (row 0 is zero);
      2. v = top right-singular vector of M (unit (D,)): the rank-1 subspace of the trajectory;
      3. c_i = M_i . v, the position of snapshot i along v;
      4. ordinary least squares c_i ~ a + b * step_i over all k points (the anchor's (step_0, 0)
         included): b = sum((s - s_mean)(c - c_mean)) / sum((s - s_mean)^2), a = c_mean - b*s_mean;
      5. W_target = W_0 + (a + b * target_step) * v, reshaped.
    With k = 2 the line runs exactly through both snapshots; a tensor that never moved (M = 0)
    is returned as W_0. The sign of v cancels between steps 3 and 5. Computed in float64.
    """
    if len(snapshots) < 2 or len(snapshots) != len(steps):
        raise ValueError(
            f"extrapolation needs at least 2 snapshots with one step each, got {len(snapshots)} snapshots "
            f"and {len(steps)} steps; save more checkpoints or use more of them"
        )
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        raise ValueError(f"snapshot steps must be strictly increasing, got {steps}")
    first = snapshots[0]
    for step, snapshot in zip(steps, snapshots):
        names = set(snapshot) | set(first)
        mismatched = sorted(
            n for n in names if n not in snapshot or n not in first or snapshot[n].shape != first[n].shape
        )
        if mismatched:
            raise ValueError(
                f"snapshot at step {step} does not match the one at step {steps[0]} (tensors {mismatched[:3]}); "
                "all snapshots must come from the same adapter configuration"
            )
    step_values = torch.tensor(steps, dtype=torch.float64)  # (k,)
    extrapolated = {}
    for name, anchor in first.items():
        if not anchor.is_floating_point():
            raise ValueError(
                f"tensor {name!r} has dtype {anchor.dtype}; only floating-point weights can be extrapolated"
            )
        history = torch.stack([s[name].reshape(-1).double() for s in snapshots])  # (k, D)
        predicted = _extrapolate_tensor(history, step_values, float(target_step))  # (D,)
        extrapolated[name] = predicted.reshape(anchor.shape).to(anchor.dtype)
    return extrapolated


def trajectory_error(
    predicted: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> float:
    """How far a predicted snapshot is from the real one, relative to how far training moved.

    All three dicts map the same names to same-shaped tensors. Returns
    ||predicted - actual|| / ||actual - anchor||, norms over all tensors together (Frobenius):
    0 is a perfect prediction, 1 is as wrong as not moving from the anchor at all.
    Returns inf if the real run never moved from the anchor but the prediction did, 0 if neither moved.
    """
    assert set(predicted) == set(actual) == set(anchor), "predicted, actual and anchor must hold the same tensors"
    error = sum(float(((predicted[n].double() - actual[n].double()) ** 2).sum()) for n in actual)
    moved = sum(float(((actual[n].double() - anchor[n].double()) ** 2).sum()) for n in actual)
    if moved == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return (error / moved) ** 0.5


def adapter_dirs(run_dir: Path) -> dict[int, Path]:
    """Step -> adapter folder for every `RUN_DIR/checkpoints/step-N/adapter/` holding weights."""
    checkpoints = Path(run_dir) / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(
            f"no checkpoints folder at {checkpoints}; pass the run directory that train.py wrote "
            "(it holds checkpoints/step-000010/adapter/...)"
        )
    found = {}
    for step_dir in checkpoints.iterdir():
        match = _STEP_DIR.fullmatch(step_dir.name)
        if match and (step_dir / "adapter" / ADAPTER_WEIGHTS).is_file():
            found[int(match.group(1))] = step_dir / "adapter"
    return dict(sorted(found.items()))


def load_adapter_snapshots(
    run_dir: Path, only_steps: list[int] | None = None
) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Read the saved LoRA adapters of a run (all, or those of `only_steps`), in step order.

    Returns (steps, snapshots): steps ascending, snapshots[i] the tensors of
    `RUN_DIR/checkpoints/step-{steps[i]:06d}/adapter/adapter_model.safetensors`, on CPU.
    """
    dirs = adapter_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(
            f"no adapters under {Path(run_dir) / 'checkpoints'}; expected "
            f"step-NNNNNN/adapter/{ADAPTER_WEIGHTS} (is this a LoRA run with checkpointing on?)"
        )
    if only_steps is not None:
        missing = sorted(set(only_steps) - set(dirs))
        if missing:
            raise FileNotFoundError(f"no adapter saved for steps {missing} in {run_dir}; saved steps: {list(dirs)}")
        dirs = {step: path for step, path in dirs.items() if step in set(only_steps)}
    return list(dirs), [load_file(d / ADAPTER_WEIGHTS, device="cpu") for d in dirs.values()]


def write_adapter(out_dir: Path, tensors: dict[str, torch.Tensor], config_src_dir: Path) -> None:
    """Write `tensors` as a peft adapter folder: weights plus the adapter_config.json of `config_src_dir`.

    Refuses to write into a folder that already holds adapter weights, so that a mistyped --out
    cannot overwrite a real checkpoint.
    """
    out_dir, config = Path(out_dir), Path(config_src_dir) / ADAPTER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {config_src_dir}; the extrapolated adapter needs its config")
    if (out_dir / ADAPTER_WEIGHTS).exists():
        raise FileExistsError(f"{out_dir / ADAPTER_WEIGHTS} already exists; choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: t.contiguous() for name, t in tensors.items()}
    save_file(weights, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    shutil.copyfile(config, out_dir / ADAPTER_CONFIG)
