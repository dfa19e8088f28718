"""Where metrics go: JSONL (the source of truth), TensorBoard, a tqdm bar, and PNG plots."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunTracker:
    """Appends one JSON record per step; on resume, drops records of steps that will be redone."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, tensorboard: bool,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="GRPO", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.bar is not None and "eval/accuracy" not in metrics:
            self.bar.update(1)
            self.bar.set_postfix(
                reward=f"{metrics.get('reward/total/mean', float('nan')):.3f}",
                kl=f"{metrics.get('kl', float('nan')):.4f}",
                s_per_step=f"{metrics.get('time/step_s', float('nan')):.1f}",
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_rewards(metrics_path: Path, out_png: Path) -> Path | None:
    """Reward curves (total and each reward's mean per step) and held-out accuracy, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "reward/total/mean" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    if not train:
        log.warning("no training records in %s; nothing to plot", metrics_path)
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in train[-1] if k.startswith("reward/") and k.endswith("/mean")]
    for key in keys:
        xs = [r["step"] for r in train if r.get(key) is not None]
        ys = [r[key] for r in train if r.get(key) is not None]
        ax1.plot(xs, ys, label=key.removeprefix("reward/").removesuffix("/mean"),
                 linewidth=2 if "total" in key else 1)
    ax1.set(xlabel="step", ylabel="mean reward", title="Training rewards")
    ax1.legend()
    if evals:
        ax2.plot([r["step"] for r in evals], [r["eval/accuracy"] for r in evals], "o-", label="accuracy")
        ax2.plot([r["step"] for r in evals], [r["eval/reward_mean"] for r in evals], "s--", label="mean reward")
        ax2.legend()
    ax2.set(xlabel="step", title="Held-out (greedy)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
