"""Faults injected into real runs on the tiny model: non-finite rewards and gradients, SIGTERM, a
checkpoint write that fails, and bad recipes and data rows (each a named error, never a traceback)."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data
import rewards
import train
from grpo.runtime import checkpoint
from grpo.runtime.config import ConfigError, load_config
from grpo.training import update
from rewards.registry import _REWARDS
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")
from tests.test_train import REPO, adapter_weights, tiny_args


def step_records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# ---- non-finite numbers ------------------------------------------------------------------------


def test_a_non_finite_reward_is_logged_and_never_reaches_the_loss(tiny_model_dir, tmp_path, caplog):
    @rewards.register("test_infinite_on_digits")
    def infinite(completions, **columns):
        return [math.inf if any(ch.isdigit() for ch in c) else 1.0 for c in completions]

    try:
        train.main(tiny_args(tiny_model_dir, tmp_path, 2, "rewards=[{name: test_infinite_on_digits}, "
                                                          "{name: digit_share}]"))
    finally:
        del _REWARDS["test_infinite_on_digits"]
    assert "returned" in caplog.text and "not finite" in caplog.text
    for record in step_records(tmp_path):
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["skipped"] == 0


def test_non_finite_gradients_skip_the_step_and_three_in_a_row_stop_the_run(tiny_model_dir, tmp_path, monkeypatch):
    real = update.aggregate_loss
    calls = {"n": 0}

    def poisoned_after_step_one(*args, **kwargs):  # 2 micro-batches per step: calls 3 onwards are step 2+
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(update, "aggregate_loss", poisoned_after_step_one)
    with pytest.raises(update.NonFiniteError, match=r"3 steps in a row \(2-4\).*step-000001"):
        train.main(tiny_args(tiny_model_dir, tmp_path, 10))
    records = step_records(tmp_path)
    assert [(r["step"], r["skipped"]) for r in records] == [(1, 0), (2, 1), (3, 1), (4, 1)]
    assert all(math.isnan(r["grad_norm"]) if r["grad_norm"] is not None else True for r in records[1:])
    assert len({r["lr"] for r in records[1:]}) == 1  # the schedule did not move while steps were skipped
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]  # the last good one, intact
    state = torch.load(tmp_path / "checkpoints" / "step-000001" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1


# ---- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_checkpoints_exits_0_and_the_same_command_resumes_exactly(tiny_model_dir, tmp_path):
    steps = 6
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train.main(tiny_args(tiny_model_dir, straight, steps, "log.save_every=50"))
    command = [sys.executable, "-m", "tests.helpers.train_with_digit_reward",
               *tiny_args(tiny_model_dir, stopped, steps, "log.save_every=50")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = stopped / "metrics.jsonl"
        if metrics.is_file() and '"step": 2' in metrics.read_text() and '"loss"' in metrics.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # during step 3 (or between steps): it ends there, step 2 or 3 saved
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    note = json.loads((stopped / "stopped.json").read_text())
    assert "stopped by SIGTERM after step" in stderr
    assert 2 <= note["step"] < steps and Path(note["checkpoint"]).name == f"step-{note['step']:06d}"
    assert not (stopped / "final").exists()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)  # the same command
    assert not (stopped / "stopped.json").exists()
    assert [r["step"] for r in step_records(stopped)] == list(range(1, steps + 1))
    a, b = adapter_weights(straight), adapter_weights(stopped)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_sigterm_before_the_optimizer_step_abandons_the_step_and_saves_the_last_completed_one(tiny_model_dir,
                                                                                            tmp_path):
    """SIGTERM while step 3 computes its rewards (a reward that takes 2 s): step 3 is abandoned at its
    next stage, not finished (no step 3 in the log), step 2 is what is saved, and the same command
    resumes to the adapter of an uninterrupted run."""
    steps, calls = 4, tmp_path / "reward-calls"
    extra = ("log.save_every=50", "log.eval_before=false", "rewards=[{name: slow_digit_share, weight: 1.0}]")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train.main(tiny_args(tiny_model_dir, straight, steps, *extra))
    command = [sys.executable, "-m", "tests.helpers.train_with_digit_reward",
               *tiny_args(tiny_model_dir, stopped, steps, *extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLOW_REWARD_S": "2", "SLOW_REWARD_LOG": str(calls)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if calls.is_file() and len(calls.read_text().splitlines()) >= 3:  # step 3's reward has begun
            break
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert time.monotonic() - signalled < 30  # the rest of the reward, a checkpoint, the exit
    note = json.loads((stopped / "stopped.json").read_text())
    assert note["step"] == 2 and Path(note["checkpoint"]).name == "step-000002"
    assert [r["step"] for r in step_records(stopped)] == [1, 2]  # step 3 never happened
    subprocess.run(command, cwd=REPO, env={**env, "SLOW_REWARD_S": "0"}, check=True, capture_output=True)
    assert [r["step"] for r in step_records(stopped)] == [1, 2, 3, 4]
    a, b = adapter_weights(straight), adapter_weights(stopped)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


# ---- a checkpoint write that fails ----------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_stops_with_the_cause(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    real_save = torch.save

    def disk_full_at_step_two(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", disk_full_at_step_two)
    with pytest.raises(checkpoint.CheckpointWriteError,
                       match=r"step 2 .*No space left on device.*step-000001 is intact.*Free disk space"):
        train.main(tiny_args(tiny_model_dir, tmp_path, 4))
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]  # no half-written folder left
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    train.main(tiny_args(tiny_model_dir, tmp_path, 4))  # the same command resumes from step 1
    assert [r["step"] for r in step_records(tmp_path)] == [1, 2, 3, 4]


# ---- bad input: a named error, never a traceback from deep inside --------------------------------


@pytest.mark.parametrize("recipe_text, message", [
    pytest.param("- model\n- data\n", "must be a YAML mapping of sections", id="yaml-list"),
    pytest.param("train: [unclosed\n", "not valid YAML", id="broken-yaml"),
    pytest.param("train:\n  batch_size: big\n", "train.batch_size: expected int", id="wrong-type"),
    pytest.param("train:\n  batch_size: 0\n", "train.batch_size=0 must be a positive multiple", id="zero-batch"),
    pytest.param("train:\n  batch_size: -8\n", "train.batch_size=-8 must be a positive multiple", id="negative-batch"),
    pytest.param("rollout:\n  max_new_tokens: 0\n", "rollout.max_new_tokens=0: must be > 0", id="zero-tokens"),
    pytest.param("rollout:\n  group_size: 0\n", "rollout.group_size=0: GRPO needs at least 2", id="zero-group"),
    pytest.param("train:\n  grad_accum_steps: 0\n", "train.grad_accum_steps=0: must be >= 1", id="zero-accum"),
    pytest.param("model:\n  lora_r: -4\n", "model.lora_r and model.lora_alpha must be > 0", id="negative-rank"),
    pytest.param("log:\n  eval_batch_size: 0\n", "log.eval_batch_size=0: must be >= 1", id="zero-eval-batch"),
    pytest.param("train:\n  learning_rate: .nan\n", "train.learning_rate=nan: must be a finite number",
                 id="nan-learning-rate"),
    pytest.param("trainer:\n  steps: 1\n", "unknown section", id="unknown-section"),
    pytest.param("train:\n  stepz: 1\n", "train: unknown key\\(s\\) \\['stepz'\\]", id="unknown-key"),
    pytest.param("rewards: []\n", "rewards: expected a non-empty list", id="empty-rewards"),
    pytest.param("rewards:\n  - {weight: 1.0}\n", "rewards\\[0\\]", id="reward-without-name"),
])
def test_malformed_recipes_name_the_key(tmp_path, recipe_text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)


def test_missing_files_name_the_key(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="recipe file .*no-such.yaml.* not found"):
        load_config(tmp_path / "no-such.yaml")
    with pytest.raises(ConfigError, match="data.train_file='.*missing.jsonl': no such file"):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, "data.task=jsonl", f"data.train_file={tmp_path}/missing.jsonl"))
    with pytest.raises(ConfigError, match="model.name='./no/such/model': no such folder"):
        train.main(tiny_args("./no/such/model", tmp_path, 1))


QUESTION = "What is 2 + 2?"


@pytest.mark.parametrize("line, reason", [
    pytest.param(json.dumps({"question": QUESTION}).encode(), "missing or empty field 'answer'", id="missing-answer"),
    pytest.param(json.dumps({"question": QUESTION, "answer": "four\n#### four"}).encode(), "is not a number",
                 id="non-numeric-answer"),
    pytest.param(json.dumps({"question": "", "answer": "#### 4"}).encode(), "missing or empty field 'question'",
                 id="empty-question"),
    pytest.param(json.dumps({"question": "x" * 1_000_000, "answer": "#### 4"}).encode(),
                 "a row is at most 1,000,000", id="one-megabyte-row"),
    pytest.param(b'{"question": "What is \xff?", "answer": "#### 4"}', "not valid UTF-8 (byte 0xff",
                 id="invalid-utf8"),
    pytest.param(b'[1, 2, 3]', "expected a JSON object, got list", id="not-an-object"),
    pytest.param(b'{"question": ', "not valid JSON", id="truncated-json"),
])
def test_bad_gsm8k_rows_name_the_file_and_line_or_are_skipped(tmp_path, line, reason):
    good = json.dumps({"question": QUESTION, "answer": "2 + 2 = 4\n#### 4"}).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(good + b"\n" + line + b"\n" + good + b"\n")
    with pytest.raises(data.BadRowError, match=f"{path}, line 2: .*{reason}".replace("(", "\\(")):
        data.load_gsm8k_file(path)
    assert len(data.load_gsm8k_file(path, on_bad_row="skip")) == 2  # the documented skip: logged, dropped


@pytest.mark.parametrize("row, reason", [
    pytest.param({"prompt": "", "answer": "4"}, "missing or empty field 'prompt'", id="empty-prompt"),
    pytest.param({"prompt": "Q?"}, "field 'answer' must be a non-empty string or number", id="missing-answer"),
    pytest.param({"prompt": "Q?", "answer": True}, "field 'answer' must be", id="boolean-answer"),
])
def test_bad_prepared_rows_name_the_file_and_line(tmp_path, row, reason):
    path = tmp_path / "prepared.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "answer": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(data.BadRowError, match=f"line 2: {reason}"):
        data.load_prepared_jsonl(path)


def test_the_script_prints_the_error_not_a_traceback(tiny_model_dir, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b'{"prompt": "Q?", "answer": "1"}\n{"prompt": "\xff"}\n')
    out = subprocess.run([sys.executable, "train.py", *tiny_args(tiny_model_dir, tmp_path / "run", 1,
                                                                 "data.task=jsonl", f"data.train_file={bad}",
                                                                 "rewards=[{name: gsm8k_format}]")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"error: {bad}, line 2: not valid UTF-8" in out.stderr
    assert "Traceback" not in out.stderr
