"""Recipes parse, overrides apply, and bad values fail with the key named."""

from pathlib import Path

import pytest

from grpo.runtime.config import ConfigError, for_world, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_loads(recipe):
    config = load_config(recipe)
    assert config.train.batch_size % config.rollout.group_size == 0


def test_published_recipe_values():
    c = load_config(next(r for r in RECIPES if r.name == "qwen2.5-0.5b-gsm8k.yaml"))
    assert (c.model.name, c.model.load_in_4bit, c.model.lora_r, c.model.lora_alpha) == ("Qwen/Qwen2.5-0.5B", True, 16, 16)
    assert (c.train.learning_rate, c.train.batch_size, c.train.global_batch_prompts, c.train.epochs) == (1.84e-4, 16, 64, 2.0)
    # the published run's 16 GPUs take 2 micro-batches of 2 prompts per step; fewer GPUs take more
    assert [for_world(c, n).train.grad_accum_steps for n in (16, 4, 1)] == [2, 8, 32]
    assert (c.rollout.group_size, c.loss.beta, c.loss.eps_low, c.rollout.max_new_tokens) == (8, 0.04, 0.2, 256)
    assert (c.data.n_shot, c.train.max_seq_length, c.train.warmup_ratio) == (8, 2048, 0.1)


def test_overrides_are_typed_and_yaml_parsed():
    c = load_config(None, ["train.learning_rate=1e-5", "rollout.stop_strings=['###']", "model.use_lora=false"])
    assert c.train.learning_rate == 1e-5 and c.rollout.stop_strings == ("###",) and not c.model.use_lora


@pytest.mark.parametrize(
    "override, message",
    [
        pytest.param("train.batch_size=12", "multiple of rollout.group_size=8", id="batch-not-groups"),
        pytest.param("trian.beta=0", "unknown section", id="misspelt-section"),
        pytest.param("train.bta=0", "unknown key.*valid keys", id="misspelt-key"),
        pytest.param("loss.beta=-1", "loss.beta=-1.0: must be >= 0", id="negative-beta"),
        pytest.param("train.beta=-1", "loss.beta=-1.0: must be >= 0", id="negative-beta-old-name"),
        pytest.param("train.learning_rate=fast", "train.learning_rate: expected float", id="text-for-a-number"),
        pytest.param("model.use_lora=yes please", "expected true or false", id="text-for-a-bool"),
        pytest.param("data.n_shot=3", "use 0, 1, 2, 4 or 8", id="unsupported-shots"),
        pytest.param("rollout.group_size=1", "at least 2", id="group-of-one"),
        pytest.param("model.load_in_4bit=true", None, id="qlora-allowed"),  # LoRA is on by default
        pytest.param("loss.policy=ppo2", "use ppo, dual_clip, gspo", id="unknown-policy-loss"),
        pytest.param("model.cpu_matmul=mkl", "use auto, onednn or torch", id="unknown-cpu-matmul"),
        pytest.param("loss.aggregation=sum", "seq-mean-token-mean", id="unknown-aggregation"),
        pytest.param("beta=0", "expected section.key=value", id="no-section"),
    ],
)
def test_bad_values_name_the_key(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_gspo_with_a_token_level_aggregation_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="loss.policy=gspo.*needs aggregation seq-mean-token-mean.*loss.aggregation"):
        load_config(None, ["loss.policy=gspo", "loss.aggregation=token-mean"])


@pytest.mark.parametrize("old, new, value", [
    pytest.param("train.beta", "beta", 0.1, id="train.beta"),
    pytest.param("train.eps_high", "eps_high", 0.28, id="train.eps_high"),
    pytest.param("train.loss_aggregation", "aggregation", "token-mean", id="train.loss_aggregation"),
    pytest.param("variants.policy_loss", "policy", "dual_clip", id="variants.policy_loss"),
    pytest.param("variants.dual_clip_c", "dual_clip_c", 5.0, id="variants.dual_clip_c"),
])
def test_moved_keys_still_work_and_name_the_new_key(tmp_path, caplog, old, new, value):
    section, key = old.split(".")
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"{section}:\n  {key}: {value}\n")
    for config in (load_config(recipe), load_config(None, [f"{old}={value}"])):
        assert getattr(config.loss, new) == value
    assert f"loss.{new}" in caplog.text


def test_an_override_under_the_new_name_replaces_the_recipe_value_under_the_old_one(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("train:\n  beta: 0.1\n")
    assert load_config(recipe, ["loss.beta=0.0"]).loss.beta == 0.0


def test_a_key_under_both_names_in_one_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "both.yaml"
    recipe.write_text("train:\n  beta: 0.1\nloss:\n  beta: 0.2\n")
    with pytest.raises(ConfigError, match="train.beta=0.1 and loss.beta=0.2"):
        load_config(recipe)


def test_a_recipe_that_is_not_a_mapping_names_the_sections(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- model\n- data\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping of sections"):
        load_config(recipe)


def test_a_global_batch_that_does_not_split_over_the_processes_names_both_numbers():
    c = load_config(None, ["train.global_batch_prompts=10"])  # batch_size 16 / group 8 = 2 prompts per micro-batch
    assert for_world(c, 5).train.grad_accum_steps == 1
    with pytest.raises(ConfigError, match="global_batch_prompts=10 is not a multiple of 4.*2 processes"):
        for_world(c, 2)
