"""Where a run's metrics go: JSONL (the source of truth), and the trackers of `log.report_to`.

- `metrics.jsonl`: one record per step and per evaluation; on resume, records of steps that will
  be redone are dropped (a fresh start drops them all; so for the other JSONL files).
- `completions.jsonl`: sampled completions every `log.completions_every` steps, whole groups,
  with each reward's score, the total and the advantage.
- `eval_rows.jsonl`: one line per held-out row and evaluation: step, tag (before, periodic,
  after), row (index in the held-out set), correct (0/1) and reward (the weighted total).
- `tensorboard`: scalars, and the completions as a text table.
- `mlflow`: the run in the experiment `log.experiment` at MLFLOW_TRACKING_URI (a folder, a
  sqlite URI, an HTTP server, or a SageMaker managed MLflow ARN through the sagemaker-mlflow
  plugin; unset: sqlite in the output dir); params = the resolved recipe, flattened; the step
  metrics; the completions as a table; the plot, summary and final adapter as artifacts. A
  resumed run continues the same MLflow run.
- `wandb`: the same in Weights & Biases (WANDB_MODE=offline works without a network).
Only rank 0 tracks. A tracker whose package is missing is an error at start naming the extra.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from grpo.runtime.config import ConfigError

log = logging.getLogger(__name__)
REPORT_TO = ("tensorboard", "mlflow", "wandb")
EXTRA = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"train": {"beta": 0.04}} -> {"train.beta": "0.04"}: a resolved recipe as tracker params."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def require(name: str):
    """Import a tracker's package, or fail naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"log.report_to includes {name}, which is not installed: pip install -e "
                          f"\".[{EXTRA[name]}]\" (or drop {name} from log.report_to)") from None


class TensorBoardSink:
    def __init__(self, output_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)

    def log_metrics(self, step: int, metrics: dict) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_completions(self, step: int, rows: list[dict]) -> None:
        header = "| prompt | completion | total | advantage |\n|---|---|---|---|\n"
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", "<br>")[:2000]  # noqa: E731
        body = "".join(f"| {cell(r['prompt'])} | {cell(r['completion'])} | {r['total']:.3f} | {r['advantage']:.3f} |\n"
                       for r in rows)
        self.writer.add_text("completions", header + body, step)
        self.writer.flush()

    def log_files(self, files: list[Path], adapter_dir: Path | None) -> None:
        pass  # TensorBoard shows scalars and text; the files stay in the output dir

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    def __init__(self, output_dir: Path, experiment: str, run_name: str, params: dict, state: dict):
        mlflow = require("mlflow")
        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir.resolve()}/mlflow.db")
        mlflow.set_experiment(experiment)
        resumed = state.get("mlflow_run_id")
        self.run = mlflow.start_run(run_id=resumed) if resumed else mlflow.start_run(run_name=run_name)
        if not resumed:
            items = list(flatten(params).items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per call
                mlflow.log_params({k: v[:6000] for k, v in items[start : start + 100]})
        state["mlflow_run_id"] = self.run.info.run_id
        log.info("MLflow run %s in experiment %r at %s", self.run.info.run_id, experiment, mlflow.get_tracking_uri())

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.mlflow.log_metrics(_numbers(metrics), step=step)

    def log_completions(self, step: int, rows: list[dict]) -> None:
        table = {key: [json.dumps(r[key]) if isinstance(r[key], dict) else r[key] for r in rows] for key in rows[0]}
        self.mlflow.log_table(data=table, artifact_file=f"completions/step-{step:06d}.json")

    def log_files(self, files: list[Path], adapter_dir: Path | None) -> None:
        for path in files:
            if path.is_file():
                self.mlflow.log_artifact(str(path))
        if adapter_dir is not None and adapter_dir.is_dir():
            self.mlflow.log_artifacts(str(adapter_dir), artifact_path="final_adapter")

    def close(self) -> None:
        self.mlflow.end_run()


class WandbSink:
    def __init__(self, output_dir: Path, experiment: str, run_name: str, params: dict, state: dict):
        wandb = require("wandb")
        self.wandb = wandb
        run_id = state.get("wandb_run_id") or uuid.uuid4().hex[:8]  # kept for a resume to continue this run
        self.run = wandb.init(project=experiment, name=run_name, id=run_id, resume="allow", dir=str(output_dir),
                              config=params)
        state["wandb_run_id"] = run_id

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.run.log(_numbers(metrics), step=step)

    def log_completions(self, step: int, rows: list[dict]) -> None:
        columns = list(rows[0])
        data = [[json.dumps(r[c]) if isinstance(r[c], dict) else r[c] for c in columns] for r in rows]
        self.run.log({"completions": self.wandb.Table(columns=columns, data=data)}, step=step)

    def log_files(self, files: list[Path], adapter_dir: Path | None) -> None:
        for path in files:
            if path.suffix == ".png" and path.is_file():
                self.run.summary[path.stem] = self.wandb.Image(str(path))
            elif path.is_file():
                self.run.save(str(path), base_path=str(path.parent), policy="now")
        if adapter_dir is not None and adapter_dir.is_dir():
            artifact = self.wandb.Artifact("final-adapter", type="model")
            artifact.add_dir(str(adapter_dir))
            self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


class RunTracker:
    """The run's log: metrics.jsonl, completions.jsonl, eval_rows.jsonl, the progress bar and the
    `report_to` trackers."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, report_to: tuple[str, ...] = (),
                 enabled: bool = True, experiment: str = "grpo", params: dict | None = None):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self.completions_path = self.output_dir / "completions.jsonl"
        self.eval_rows_path = self.output_dir / "eval_rows.jsonl"
        self.sinks, self.bar = [], None
        if not enabled:
            return
        for path in (self.path, self.completions_path, self.eval_rows_path):
            # a resumed run keeps what led to its checkpoint; a fresh one (start_step 0) keeps nothing stale
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= start_step] if start_step else []
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        state_file = self.output_dir / "tracking.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() and start_step > 0 else {}
        run_name = self.output_dir.resolve().name
        for name in report_to:
            if name == "tensorboard":
                self.sinks.append(TensorBoardSink(self.output_dir, start_step))
            elif name == "mlflow":
                self.sinks.append(MlflowSink(self.output_dir, experiment, run_name, params or {}, state))
            elif name == "wandb":
                self.sinks.append(WandbSink(self.output_dir, experiment, run_name, params or {}, state))
        state_file.write_text(json.dumps(state))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="GRPO", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log_metrics(step, metrics)
        if self.bar is not None and "eval/accuracy" not in metrics:
            self.bar.update(1)
            self.bar.set_postfix(
                reward=f"{metrics.get('reward/total/mean', float('nan')):.3f}",
                kl=f"{metrics.get('kl', float('nan')):.4f}",
                s_per_step=f"{metrics.get('time/step_s', float('nan')):.1f}",
            )

    def log_completions(self, step: int, rows: list[dict]) -> None:
        """rows: {prompt, completion, rewards: {name: score}, total, advantage} per completion."""
        if not self.enabled or not rows:
            return
        rows = [{"step": step, **{k: jsonable(v) if not isinstance(v, dict) else
                                  {n: jsonable(s) for n, s in v.items()} for k, v in r.items()}} for r in rows]
        with self.completions_path.open("a") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        for sink in self.sinks:
            sink.log_completions(step, rows)

    def log_eval_rows(self, step: int, tag: str, rows: list[dict]) -> None:
        """rows: {row, correct, reward} per held-out row (evaluation.run_eval); JSONL only."""
        if not self.enabled or not rows:
            return
        with self.eval_rows_path.open("a") as f:
            f.writelines(json.dumps({"step": step, "tag": tag, **{k: jsonable(v) for k, v in r.items()}}) + "\n"
                         for r in rows)

    def finish(self, files: list[Path], adapter_dir: Path | None) -> None:
        """The run's files and its final adapter to the trackers, then close them."""
        if not self.enabled:
            return
        for sink in self.sinks:
            sink.log_files(files, adapter_dir)
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def jsonable(value):
    """A JSON-safe value: NaN and infinities (no result, as in a valid-call rate without calls) become null."""
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
