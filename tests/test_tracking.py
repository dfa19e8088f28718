"""Experiment tracking against the real clients: an MLflow tracking server on 127.0.0.1 (sqlite
backend), an MLflow sqlite URI, W&B in offline mode; and the completions log."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from grpo.runtime.config import ConfigError
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")
from tests.helpers import wandb_log
from tests.test_train import tiny_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a sqlite store and local artifacts; its URI."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start on 127.0.0.1")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)


def records(out: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines()]


def test_a_run_and_its_resume_are_one_mlflow_run_on_a_tracking_server(mlflow_server, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "run"
    args = ["log.report_to=[tensorboard,mlflow]", "log.experiment=grpo-tests"]
    train.main(tiny_args(tiny_model_dir, out, 2, *args))
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("grpo-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.05" and run.data.params["loss.beta"] == "0.04"
    assert json.loads(run.data.params["log.report_to"]) == ["tensorboard", "mlflow"]
    rewards = client.get_metric_history(run.info.run_id, "reward/total/mean")
    assert [m.step for m in rewards] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "kl")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"reward_curves.png", "summary.json", "final_adapter", "completions"} <= artifacts
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "final_adapter")}
    assert "final_adapter/adapter_model.safetensors" in adapter

    train.main(tiny_args(tiny_model_dir, out, 3, *args))  # the same command with one more step: resumes
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reward/total/mean")][-1] == 3


def test_an_mlflow_sqlite_uri_and_the_completions_log(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns: not in the repository
    out = tmp_path / "run"
    train.main(tiny_args(tiny_model_dir, out, 1, "log.report_to=[mlflow]", "log.completions_per_step=5"))
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("grpo").experiment_id])
    assert {m.key for m in MlflowClient(uri).get_metric_history(run.info.run_id, "loss")} == {"loss"}
    rows = records(out, "completions.jsonl")
    assert len(rows) == 8  # 5 asked for, rounded up to whole groups of 4
    for row in rows:
        assert set(row) == {"step", "prompt", "completion", "rewards", "total", "advantage"}
        assert row["step"] == 1 and set(row["rewards"]) == {"digit_share", "gsm8k_format"}
        assert row["total"] == pytest.approx(row["rewards"]["digit_share"] + 0.5 * row["rewards"]["gsm8k_format"])
    assert len({r["prompt"] for r in rows}) == 2  # two whole groups


def test_wandb_offline_run_files_read_back(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train.main(tiny_args(tiny_model_dir, out, 2, "log.report_to=[wandb]", "log.experiment=grpo-wandb"))
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = wandb_log.records(run_file)
    key = lambda item: item.key or ".".join(item.nested_key)  # noqa: E731
    history = [{key(item): json.loads(item.value_json) for item in r.history.item} for r in logged
               if r.WhichOneof("record_type") == "history"]
    steps = [h for h in history if "reward/total/mean" in h]
    assert [h["_step"] for h in steps] == [1, 2] and all("kl" in h for h in steps)
    config = {key(item): json.loads(item.value_json) for r in logged if r.WhichOneof("record_type") == "run"
              for item in r.run.config.update}
    assert config["train"]["learning_rate"] == 0.05
    assert [h["completions.nrows"] for h in steps] == [8, 8]  # the sampled completions, as a table
    files = {f.path for r in logged if r.WhichOneof("record_type") == "files" for f in r.files.files}
    assert "summary.json" in files


def test_a_tracker_that_is_not_installed_fails_at_start_naming_its_extra(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[wandb\]"'):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.report_to=[wandb]"))
    assert not (tmp_path / "metrics.jsonl").exists()  # before any work


def test_unknown_tracker_names_the_valid_ones(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown \\['comet'\\]; use any of tensorboard, mlflow, wandb"):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.report_to=[comet]"))
