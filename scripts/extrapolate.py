"""Predict a later LoRA checkpoint from the first K of a run, with no more training (RELEX idea).

    python scripts/extrapolate.py RUN_DIR --use-first K --target-step S --out DIR

Reads the adapters train.py saved under RUN_DIR/checkpoints/step-N/adapter/, fits the rank-1
trajectory of each LoRA layer's merged weight change scale·B·A (and of each other tensor) over the
first K of them, cuts each predicted change back to the adapter's rank r by SVD
(grpo/research/extrapolate.py says how), and writes the adapter predicted for step S to DIR with the
adapter_config.json of the K-th checkpoint. Prints how much of the predicted move the rank-r cut
leaves out (rank_truncation_error) and, if the run also saved a real adapter at step S, how far the
prediction's merged weights lie from it, relative to how far training moved, next to the same figure
for simply stopping at the K-th checkpoint. To compare held-out reward, evaluate DIR and
RUN_DIR/checkpoints/step-S/adapter with evaluate.py.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other scripts

from grpo.research.extrapolate import (
    adapter_dirs,
    extrapolate_adapter,
    load_adapter_snapshots,
    lora_layers,
    read_adapter_config,
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
    dirs = adapter_dirs(run_dir)
    saved = list(dirs)
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
    layers = lora_layers(used[-1], read_adapter_config(dirs[used_steps[-1]]))
    for step in used_steps[:-1]:
        if lora_layers(used[-1], read_adapter_config(dirs[step])) != layers:
            raise ValueError(
                f"the adapter_config.json of step {step} gives other LoRA layers or scales than that of step "
                f"{used_steps[-1]}; fit only checkpoints of one run configuration"
            )
    predicted, truncation = extrapolate_adapter(used, used_steps, target_step, layers)
    write_adapter(out, predicted, dirs[used_steps[-1]])
    report = {
        "run_dir": str(run_dir), "used_steps": used_steps, "target_step": target_step, "out": str(out),
        "rank_truncation_error": truncation,
    }
    if with_real:
        real = snapshots[steps.index(target_step)]
        report["relative_weight_error"] = trajectory_error(predicted, real, used[0], layers)
        report["relative_weight_error_if_stopped"] = trajectory_error(used[-1], real, used[0], layers)
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = extrapolate_run(args.run_dir, args.use_first, args.target_step, args.out)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
