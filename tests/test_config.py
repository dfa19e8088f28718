"""Recipes parse, overrides apply, and bad values fail with the key named."""

from pathlib import Path

import pytest

from grpo.config import ConfigError, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_loads(recipe):
    config = load_config(recipe)
    assert config.train.batch_size % config.rollout.group_size == 0


def test_published_recipe_values():
    c = load_config(next(r for r in RECIPES if r.name == "qwen2.5-0.5b-gsm8k.yaml"))
    assert (c.model.name, c.model.load_in_4bit, c.model.lora_r, c.model.lora_alpha) == ("Qwen/Qwen2.5-0.5B", True, 16, 16)
    assert (c.train.learning_rate, c.train.batch_size, c.train.grad_accum_steps, c.train.epochs) == (1.84e-4, 16, 2, 2.0)
    assert (c.rollout.group_size, c.train.beta, c.train.eps_low, c.rollout.max_new_tokens) == (8, 0.04, 0.2, 256)
    assert (c.data.n_shot, c.train.max_seq_length, c.train.warmup_ratio) == (8, 2048, 0.1)


def test_overrides_are_typed_and_yaml_parsed():
    c = load_config(None, ["train.learning_rate=1e-5", "rollout.stop_strings=['###']", "model.use_lora=false"])
    assert c.train.learning_rate == 1e-5 and c.rollout.stop_strings == ("###",) and not c.model.use_lora


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=12", "multiple of rollout.group_size=8"),
        ("trian.beta=0", "unknown section"),
        ("train.bta=0", "unknown key.*valid keys"),
        ("train.beta=-1", "train.beta=-1.0: must be >= 0"),
        ("train.learning_rate=fast", "train.learning_rate: expected float"),
        ("model.use_lora=yes please", "expected true or false"),
        ("data.n_shot=3", "use 0, 1, 2, 4 or 8"),
        ("rollout.group_size=1", "at least 2"),
        ("model.load_in_4bit=true", None),  # allowed: LoRA is on by default
        ("variants.policy_loss=ppo2", "use ppo, dual_clip or gspo"),
        ("model.cpu_matmul=mkl", "use auto, onednn or torch"),
        ("train.loss_aggregation=sum", "seq-mean-token-mean"),
        ("beta=0", "expected section.key=value"),
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
