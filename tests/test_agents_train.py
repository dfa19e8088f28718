"""Agents train end to end on the tiny model with the real sampler: an environment written only against TRL's
convention, the e-commerce gym with RLVE's curriculum (saved in checkpoints, resumed exactly), reasoning-gym's
problems at the curriculum's levels."""

import json
from pathlib import Path

import pytest
import torch

import train
from grpo.runtime import checkpoint
from grpo.runtime.config import ConfigError
from tests.test_train import adapter_weights, tiny_args

GUESS_ROWS = [{"prompt": [{"role": "user", "content": f"Guess my number ({i})."}], "secret": 3 + i} for i in range(6)]


def records(out_dir, key="loss"):
    return [r for r in map(json.loads, (Path(out_dir) / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_a_trl_style_environment_trains_one_step_unchanged(tiny_model_dir, tmp_path):
    """tests/helpers/trl_style_env.py knows nothing of this project: its class and a stateless tool, named in
    the recipe, train a step; the environment's reward is a reward column; completions.jsonl holds each
    episode's conversation."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in GUESS_ROWS))
    train.main(tiny_args(tiny_model_dir, tmp_path / "run", 1, "data.task=jsonl", f"data.train_file={rows}",
                         "data.val_fraction=0.3", "env.factory=tests.helpers.trl_style_env:NumberGuessEnv",
                         "env.tools=[tests.helpers.trl_style_env:add]", "rewards=[]", "rollout.max_new_tokens=24"))
    (step,) = records(tmp_path / "run")
    assert step["env/turns"] >= 1 and "reward/env/mean" in step and step["skipped"] == 0
    logged = [json.loads(x) for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert logged and all(isinstance(r["completion"], list) and r["completion"][0]["role"] == "assistant"
                          for r in logged)
    assert all(r["completion"][0]["content"] in r["sampled"] for r in logged)  # the text as the model wrote it
    assert all(r["prompt"][-1]["content"].endswith("Find it with the guess tool.") for r in logged)  # reset's text
    evaluation = records(tmp_path / "run", "eval/success_rate")
    assert [r["step"] for r in evaluation] == [0, 1]
    # strict JSON: a rate with nothing to count (no valid calls without calls) is null, not NaN
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=pytest.fail)
    assert {"eval/valid_call_rate", "eval/success_rate"} <= summary["after"].keys()


ECOM = ("data.task=ecom", "data.limit_eval=2", "env.curriculum=true", "rewards=[]", "rollout.max_new_tokens=32",
        "log.eval_before=false")


def test_the_ecom_curriculum_is_saved_in_checkpoints_and_resumes_exactly(tiny_model_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.main(tiny_args(tiny_model_dir, straight, 2, *ECOM))
    train.main(tiny_args(tiny_model_dir, resumed, 2, *ECOM, "train.max_steps=1"))
    state = checkpoint.read_state(checkpoint.latest_checkpoint(resumed))
    assert set(state["curriculum"]["environments"]) == {"discovery", "cart", "returns", "tracking"}
    train.main(tiny_args(tiny_model_dir, resumed, 2, *ECOM))  # resumes at step 2 with the saved curriculum
    a, b = records(straight), records(resumed)
    assert [r["step"] for r in b] == [1, 2]
    assert {k: v for k, v in a[-1].items() if k.startswith("curriculum/")} == {
        k: v for k, v in b[-1].items() if k.startswith("curriculum/")}
    wa, wb = adapter_weights(straight), adapter_weights(resumed)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=0, rtol=0)


def test_reasoning_gym_problems_train_at_the_curriculums_levels(tiny_model_dir, tmp_path):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "data.task=reasoning_gym", "env.curriculum=true",
                         "data.reasoning_gym_datasets=[basic_arithmetic, leg_counting]", "data.limit_eval=2",
                         "rewards=[{name: reasoning_gym}]", "log.accuracy_reward=reasoning_gym",
                         "rollout.max_new_tokens=12", "log.eval_before=false"))
    (step,) = records(tmp_path)
    assert step["curriculum/basic_arithmetic/high"] == 0 and "env/success/leg_counting/level_0" in step


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["data.task=ecom", "env.factory=x.y:Z"], "brings its own environments", id="ecom-with-a-factory"),
    pytest.param(["env.curriculum=true"], "rows with levels", id="curriculum-without-levels"),
    pytest.param(["data.task=ecom", "train.max_steps=0"], "set train.max_steps", id="leveled-rows-without-steps"),
    pytest.param(["env.factory=no.such.module:Env"], "no.such.module", id="factory-not-importable"),
])
def test_bad_agent_settings_name_the_key(tiny_model_dir, tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, *overrides))
