"""End-to-end training on a tiny random model: steps run, LoRA moves, kill + resume is exact."""

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
from safetensors.torch import load_file

import train
from grpo.runtime.config import ConfigError
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")

REPO = Path(__file__).resolve().parents[1]


def tiny_args(model_dir, out_dir, steps, *extra):
    return [
        "--output-dir", str(out_dir),
        f"model.name={model_dir}", "model.lora_r=4", "model.lora_alpha=8",
        "data.task=synthetic", "data.n_shot=0", "data.num_synthetic=64", "data.limit_eval=4",
        "rollout.group_size=4", "rollout.max_new_tokens=8",
        "train.batch_size=8", "train.grad_accum_steps=2", f"train.max_steps={steps}",
        "train.learning_rate=0.05", "loss.beta=0.04", "train.max_seq_length=512",
        "log.report_to=[]", "log.eval_batch_size=4",
        'rewards=[{name: digit_share, weight: 1.0}, {name: gsm8k_format, weight: 0.5}]',
        *extra,
    ]


def adapter_weights(out_dir):
    return load_file(Path(out_dir) / "final" / "adapter" / "adapter_model.safetensors")


def test_two_steps_change_lora_weights_and_log_finite_metrics(tiny_model_dir, tmp_path):
    summary = train.main(tiny_args(tiny_model_dir, tmp_path, 2, "train.num_iterations=2"))
    lora_b = {k: v for k, v in adapter_weights(tmp_path).items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # B starts at exactly 0
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"]) and r["kl"] >= 0
        assert 0 <= r["clip_frac"] <= 1 and r["entropy"] > 0
        assert "reward/digit_share/mean" in r and "time/rollout_and_reward_s" in r
    assert summary["before"] is not None and summary["after"] is not None
    assert (tmp_path / "reward_curves.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_full_finetuning_with_frozen_reference_copy(tiny_model_dir, tmp_path):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "model.use_lora=false"))
    assert any("embed_tokens" in k for k in load_file(next((tmp_path / "final" / "adapter").glob("*.safetensors"))))


@pytest.mark.parametrize(
    "override, message",
    [
        pytest.param("train.batch_size=6", "multiple of rollout.group_size=4", id="batch-not-groups"),
        pytest.param("train.learnin_rate=1", "unknown key", id="misspelt-key"),
        pytest.param("rollout.temperature=0", "must be > 0", id="zero-temperature"),
        pytest.param('rewards=[{name: no_such_reward}]', "no_such_reward", id="unknown-reward"),
    ],
)
def test_bad_config_fails_before_training_with_the_key_named(tiny_model_dir, tmp_path, override, message):
    with pytest.raises((ConfigError, KeyError, ValueError), match=message):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, override))


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    steps = 10
    straight = tmp_path / "straight"
    train.main(tiny_args(tiny_model_dir, straight, steps))

    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "tests.helpers.train_with_digit_reward",
               *tiny_args(tiny_model_dir, interrupted, steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (interrupted / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None, "training exited before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "final").exists()

    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = adapter_weights(straight), adapter_weights(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    records = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, steps + 1))


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(["loss.policy=dual_clip", "reward_shaping.overlong_penalty=true",
                      "reward_shaping.overlong_cache_len=4", "tokens.entropy_top_fraction=0.5", "tokens.credit=proxy",
                      "reward_shaping.weighting=dynamic", "reward_shaping.self_certainty_weight=0.5"],
                     id="dual-clip-soft-overlong-entropy-credit-weighting-certainty"),
        pytest.param(["loss.policy=gspo", "loss.eps_low=3e-4", "loss.eps_high=4e-4",
                      "tokens.overlong_mask=true", "rollout.dynamic_sampling=true", "train.num_iterations=2"],
                     id="gspo-overlong-mask-dynamic-sampling-two-iterations"),
    ],
)
def test_variants_train_with_finite_losses(tiny_model_dir, tmp_path, variant):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, *variant))
    record = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1]
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    if "loss.policy=dual_clip" in variant:  # each policy loss logs the indicators of its own clipping
        assert 0 <= record["dual_clip_frac"] <= 1
    if "reward_shaping.weighting=dynamic" in variant:
        assert "reward_weight/0" in record and "reward/overlong_penalty/mean" in record
    if "rollout.dynamic_sampling=true" in variant:
        assert 1 <= record["dynamic_sampling/tries"] <= 4


def test_a_step_with_the_compiled_decode_samples_what_the_eager_one_does(tiny_model_dir, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    # The compiled step leaves float32 CPU products to PyTorch (no oneDNN layers): so does the eager run here.
    train.main(tiny_args(tiny_model_dir, eager, 1, "model.cpu_matmul=torch"))
    train.main(tiny_args(tiny_model_dir, compiled, 1, "model.cpu_matmul=torch", "rollout.compile=true"))
    a, b = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][0]
            for d in (eager, compiled))
    for key in ("reward/total/mean", "completion/length_mean", "completion/truncated_frac"):
        assert a[key] == b[key], key
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
