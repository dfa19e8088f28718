"""Predict a later LoRA checkpoint from the first K of a run, with no more training (RELEX idea).

    python scripts/extrapolate.py RUN_DIR --use-first K --target-step S --out DIR

Reads the adapters train.py saved under RUN_DIR/checkpoints/step-N/adapter/, fits each tensor's
rank-1 trajectory over the first K of them (grpo/research/extrapolate.py says how), and writes the adapter
predicted for step S to DIR with the adapter_config.json of the K-th checkpoint. If the run also
saved a real adapter at step S, prints how far the prediction lies from it, relative to how far
training moved, next to the same figure for simply stopping at the K-th checkpoint. To compare
held-out reward, evaluate DIR and RUN_DIR/checkpoints/step-S/adapter with evaluate.py.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other scripts

from grpo.research.extrapolate import (
    adapter_dirs,
    extrapolate_trajectory,
    load_adapter_snapshots,
    trajectory_error,
    write_adapter,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding checkpoints/step-N/adapter/")
    parser.add_argument("--use-first", type=int, required=True, help="fit on the first K saved adapters (K >= 2)")
    parser.add_argument("--target-step", type=int, required=True, help="training step to predict")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the predicted adapter to")
    return parser.parse_args(argv)


def extrapolate_run(run_dir: Path, use_first: int, target_step: int, out: Path) -> dict:
    """Fit, write and compare; returns the report that main prints."""
    saved = list(adapter_dirs(run_dir))
    if use_first < 2:
        raise ValueError(f"--use-first must be at least 2 (a line needs two points), got {use_first}")
    if len(saved) < use_first:
        raise ValueError(f"--use-first {use_first} but {run_dir} holds only {len(saved)} adapters (steps {saved})")
    used_steps = saved[:use_first]
    if target_step < used_steps[0]:
        raise ValueError(f"--target-step {target_step} lies before the first saved step {used_steps[0]}")
    with_real = target_step in saved and target_step not in used_steps
    steps, snapshots = load_adapter_snapshots(run_dir, used_steps + ([target_step] if with_real else []))
    used = snapshots[:use_first]
    predicted = extrapolate_trajectory(used, used_steps, target_step)
    write_adapter(out, predicted, adapter_dirs(run_dir)[used_steps[-1]])
    report = {"run_dir": str(run_dir), "used_steps": used_steps, "target_step": target_step, "out": str(out)}
    if with_real:
        real = snapshots[steps.index(target_step)]
        report["relative_weight_error"] = trajectory_error(predicted, real, used[0])
        report["relative_weight_error_if_stopped"] = trajectory_error(used[-1], real, used[0])
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = extrapolate_run(args.run_dir, args.use_first, args.target_step, args.out)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
