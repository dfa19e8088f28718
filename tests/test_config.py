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
        pytest.param("train.beta=-1", "train.beta is now loss.beta", id="old-name-names-the-new-key"),
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
    pytest.param("train.beta", "loss.beta", 0.1, id="train.beta"),
    pytest.param("train.loss_aggregation", "loss.aggregation", "token-mean", id="train.loss_aggregation"),
    pytest.param("train.advantage_scale", "advantage.scale", "none", id="train.advantage_scale"),
    pytest.param("train.objective", "objective.name", "opd", id="train.objective"),
    pytest.param("variants.policy_loss", "loss.policy", "dual_clip", id="variants.policy_loss"),
    pytest.param("variants.token_credit", "tokens.credit", "paper", id="variants.token_credit"),
    pytest.param("variants.dynamic_sampling", "rollout.dynamic_sampling", True, id="variants.dynamic_sampling"),
    pytest.param("variants.reward_normalization", "advantage.estimator", "gdpo", id="variants.reward_normalization"),
    pytest.param("distill.teacher_adapter", "objective.teacher_adapter", "x", id="distill.teacher_adapter"),
    pytest.param("log.tensorboard", "log.report_to", True, id="log.tensorboard"),
])
def test_a_moved_key_is_an_error_naming_its_new_place(tmp_path, old, new, value):
    section, key = old.split(".")
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"{section}:\n  {key}: {value}\n")
    for load in (lambda: load_config(recipe), lambda: load_config(None, [f"{old}={value}"])):
        with pytest.raises(ConfigError, match=f"{old}.* is now {new}"):
            load()


def test_every_moved_key_points_at_a_key_that_exists():
    from grpo.runtime.config import MOVED, SECTIONS

    for old, new in MOVED.items():
        section, key = new.split()[0].split("=")[0].split(".")
        assert key in SECTIONS[section].__dataclass_fields__, (old, new)


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
