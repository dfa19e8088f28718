"""The research-frontier switches run end to end: one training step on the tiny model each
(the math of each is tested by hand in its own test file)."""

import json
import math

import pytest
import train
from grpo.runtime.config import ConfigError
from tests.helpers import train_with_digit_reward  # noqa: F401  (registers "digit_share")
from tests.test_train import tiny_args


def test_the_recipe_names_and_the_registries_agree():
    """A name the recipe check accepts is one the setup can build (and the reverse)."""
    from grpo.objectives import OBJECTIVES
    from grpo.objectives.token_credit import CREDIT_WEIGHTS
    from grpo.runtime import sections

    assert set(OBJECTIVES) == set(sections.OBJECTIVES)
    assert set(CREDIT_WEIGHTS) == set(sections.TOKEN_CREDITS)


def step_records(out_dir):
    records = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


@pytest.mark.parametrize(
    "overrides, logged",
    [
        pytest.param(["advantage.estimator=gdpo"], "loss", id="gdpo"),
        pytest.param(["loss.policy=kl_cov", "loss.kl_cov_ratio=0.1", "train.num_iterations=2"], "kl_cov_frac",
                     id="kl-cov"),
        pytest.param(["tokens.credit=paper"], "clip_frac", id="delta-paper"),
        pytest.param(["tokens.credit=proxy"], "clip_frac", id="delta-proxy"),
        pytest.param(["objective.name=distil", "objective.top_k=8"], "distil/cross_entropy", id="distil"),
    ],
)
def test_switch_trains_one_step(tiny_model_dir, tmp_path, overrides, logged):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.eval_before=false", *overrides))
    (record,) = step_records(tmp_path)
    assert math.isfinite(record["loss"]) and math.isfinite(record[logged]) and record["skipped"] == 0


def test_kl_cov_penalizes_the_ratio_share_of_tokens(tiny_model_dir, tmp_path):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.eval_before=false", "loss.policy=kl_cov",
                         "loss.kl_cov_ratio=0.25", "train.num_iterations=2"))
    (record,) = step_records(tmp_path)
    # floor(0.25 x tokens) of each micro-batch's tokens (at least one): about a quarter, a little less
    assert 0.15 < record["kl_cov_frac"] <= 0.25


@pytest.mark.parametrize(
    "horizon, longest",
    [
        pytest.param(["objective.horizon=truncated", "objective.horizon_fraction=0.25"], 2, id="topd-2-of-8"),
        pytest.param(["objective.horizon=progressive", "objective.horizon_fraction=0.25",
                      "objective.horizon_growth_steps=4"], 2, id="popd-step-1"),
        pytest.param([], 8, id="full-horizon"),
    ],
)
def test_on_policy_distillation_samples_its_horizon(tiny_model_dir, tiny_teacher_adapter, tmp_path, horizon,
                                                     longest):
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.eval_before=false", "objective.name=opd",
                         f"objective.teacher_adapter={tiny_teacher_adapter}", "loss.beta=0", *horizon))
    (record,) = step_records(tmp_path)
    # a different teacher: a non-zero per-token signal (its mean, a sampled KL estimate, may have either sign)
    assert abs(record["opd/reverse_kl"]) > 1e-4
    assert record["completion/length_max"] <= longest
    assert math.isfinite(record["loss"]) and record["skipped"] == 0


def test_distillation_from_itself_has_zero_signal(tiny_model_dir, tmp_path):
    """The teacher = the student's base model, the student's LoRA starts at B = 0: the same policy,
    so every reverse-KL advantage is 0 and so is the policy loss."""
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.eval_before=false", "objective.name=opd",
                         "loss.beta=0"))
    (record,) = step_records(tmp_path)
    assert abs(record["opd/reverse_kl"]) < 1e-5 and abs(record["loss"]) < 1e-6


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param(["loss.policy=kl_cov"], "num_iterations >= 2", id="kl-cov-on-policy"),
        pytest.param(["objective.name=opd", "loss.policy=gspo"], "gspo", id="opd-gspo"),
        pytest.param(["objective.horizon=truncated"], "objective.name=opd", id="horizon-without-opd"),
        pytest.param(["advantage.estimator=gdpo", "advantage.scale=batch"], "advantage.scale",
                     id="gdpo-twice-normalized"),
        pytest.param(["objective.name=opd", "objective.teacher_adapter=/no/such/adapter"], "adapter_config.json",
                     id="missing-teacher-adapter"),
        pytest.param(["objective.name=distil", "data.task=jsonl"], "distil", id="distil-without-feedback"),
    ],
)
def test_bad_objective_settings_name_the_key(tiny_model_dir, tmp_path, overrides, message):
    extra = list(overrides)
    if "data.task=jsonl" in extra:
        rows = tmp_path / "rows.jsonl"
        rows.write_text("\n".join(json.dumps({"prompt": f"Say {i}.", "answer": str(i)}) for i in range(8)))
        extra.append(f"data.train_file={rows}")
    with pytest.raises(ConfigError, match=message):
        train.main(tiny_args(tiny_model_dir, tmp_path, 1, *extra))


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_rollout_correction_trains_and_logs_the_sampler_mismatch(tiny_model_dir, tmp_path, mode):
    """The sampler's own log-probs against the trainer's at the sampling policy: on CPU in float32 the two
    paths agree closely (a KL near 0, ratios near 1), and the correction's weights enter the loss."""
    train.main(tiny_args(tiny_model_dir, tmp_path, 1, "log.eval_before=false", f"loss.rollout_correction={mode}"))
    (record,) = step_records(tmp_path)
    assert 0 <= record["rollout/mismatch_kl"] < 1e-4 and abs(record["rollout/mismatch_ratio"] - 1) < 1e-2
    assert math.isfinite(record["loss"]) and record["skipped"] == 0
