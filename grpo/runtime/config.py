"""Recipe configuration: the sections (grpo/runtime/sections.py) loaded from YAML with CLI overrides.

A recipe is a YAML mapping of the sections below. `key=value` overrides use dotted paths
(`train.learning_rate=1e-5`). Unknown sections or keys, wrong types and impossible values are
errors that name the key and the fix: each section checks its own fields, `validate` checks what
spans sections. A key that moved to another section is an error naming its new place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grpo.runtime.sections import (
    CPU_MATMUL, OBJECTIVES, STRATEGIES, TOKEN_CREDITS, AdvantageConfig, ConfigError, DataConfig, EnvConfig, LogConfig,
    LossConfig, ModelConfig, ObjectiveConfig, RewardShapingConfig, RewardSpec, RolloutConfig, TokensConfig,
    TrainConfig, require,
)

__all__ = [
    "CPU_MATMUL", "OBJECTIVES", "STRATEGIES", "TOKEN_CREDITS", "AdvantageConfig", "Config", "ConfigError",
    "DataConfig", "EnvConfig", "LogConfig", "LossConfig", "ModelConfig", "ObjectiveConfig", "RewardShapingConfig", "RewardSpec",
    "RolloutConfig", "TokensConfig", "TrainConfig", "apply_overrides", "config_from_dict", "for_world",
    "load_config", "to_dict", "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward_shaping: RewardShapingConfig = field(default_factory=RewardShapingConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    rewards: tuple[RewardSpec, ...] = (
        RewardSpec("gsm8k_format", 1.0),
        RewardSpec("gsm8k_correctness", 1.0),
    )


SECTIONS = {name: cls for name, cls in typing.get_type_hints(Config).items() if name != "rewards"}

# Where keys of earlier versions went: using an old name is an error that names the new one.
MOVED = {
    "train.beta": "loss.beta", "train.eps_low": "loss.eps_low", "train.eps_high": "loss.eps_high",
    "train.loss_aggregation": "loss.aggregation", "train.advantage_scale": "advantage.scale",
    "train.objective": "objective.name", "log.tensorboard": "log.report_to (a list: tensorboard, mlflow, wandb)",
    "variants.policy_loss": "loss.policy", "variants.dual_clip_c": "loss.dual_clip_c",
    "variants.overlong": "tokens.overlong_mask=true (mask) or reward_shaping.overlong_penalty=true (soft)",
    "variants.overlong_cache_len": "reward_shaping.overlong_cache_len",
    "variants.entropy_top_fraction": "tokens.entropy_top_fraction",
    "variants.token_credit": "tokens.credit", "variants.token_credit_min": "tokens.credit_min",
    "variants.token_credit_max": "tokens.credit_max", "variants.delta_lam_min": "tokens.delta_lam_min",
    "variants.delta_lam_max": "tokens.delta_lam_max", "variants.delta_refine_steps": "tokens.delta_refine_steps",
    "variants.dynamic_sampling": "rollout.dynamic_sampling",
    "variants.dynamic_sampling_max_tries": "rollout.dynamic_sampling_max_tries",
    "variants.reward_weighting": "reward_shaping.weighting",
    "variants.reward_weighting_floor": "reward_shaping.weighting_floor",
    "variants.self_certainty_weight": "reward_shaping.self_certainty_weight",
    "variants.reward_normalization": "advantage.estimator (gdpo)",
    **{f"distill.{key}": f"objective.{key}" for key in (
        "teacher", "teacher_adapter", "horizon", "horizon_fraction", "horizon_growth_steps", "top_k",
        "future_weight")},
}
OLD_SECTIONS = {"variants": "rollout, reward_shaping, advantage, tokens and loss", "distill": "objective"}


def _coerce(value, annotation, where: str):
    """Convert a YAML/CLI value to the field's declared type, or raise naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = annotation(value) if annotation is float else int(str(value), 10)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0]
        if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
            raise ConfigError(f"{where}: expected 2 values, got {value!r}")
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(items))
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported type {annotation}")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if f"{where}.{key}" in MOVED:
            raise ConfigError(f"{where}.{key} is now {MOVED[f'{where}.{key}']}: rename it in the recipe or override")
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field (e.g. a reward's name) is missing
        raise ConfigError(f"{where}: {err}") from None


def _check_sections(raw: dict) -> None:
    for name, section in raw.items():
        if name in OLD_SECTIONS:
            keys = [f"{name}.{key}" for key in (section if isinstance(section, dict) else {})]
            moved = [f"{key} is now {MOVED[key]}" for key in keys if key in MOVED] or sorted(
                f"{old} is now {new}" for old, new in MOVED.items() if old.startswith(f"{name}."))
            raise ConfigError(f"recipe section {name!r} was split into {OLD_SECTIONS[name]}: " + "; ".join(moved))
    valid = list(SECTIONS) + ["rewards"]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"recipe: unknown section(s) {unknown}; valid sections: {', '.join(valid)}")


def config_from_dict(raw: dict) -> Config:
    """Build a validated Config from a recipe mapping."""
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"recipe: expected a mapping of sections, got {type(raw).__name__}")
    raw = raw or {}
    _check_sections(raw)
    parts = {name: _build(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    if "rewards" in raw:
        specs = raw["rewards"]
        if not isinstance(specs, list):
            raise ConfigError("rewards: expected a list of {name, weight, options}")
        parts["rewards"] = tuple(_build(RewardSpec, s, f"rewards[{i}]") for i, s in enumerate(specs))
    config = Config(**parts)
    validate(config)
    return config


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with `section.key=value` overrides applied (values parsed as YAML)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key == "rewards":  # the whole list, e.g. rewards=[{name: gsm8k_format}]
            merged["rewards"] = yaml.safe_load(text)
            continue
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. loss.beta=0.0")
        if key in MOVED:
            raise ConfigError(f"override {item!r}: {key} is now {MOVED[key]}")
        section, name = key.split(".", 1)
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"override {item!r}: section {section!r} is not a mapping")
        merged[section][name] = yaml.safe_load(text)
    return merged


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML recipe (None = the built-in defaults), apply overrides, validate."""
    raw = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} not found; see recipes/ for examples")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of sections ({', '.join(SECTIONS)}, "
                              f"rewards), got a {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, list(overrides)))


def validate(c: Config) -> None:
    """Each section's own checks, then the constraints between sections, once at start."""
    for name in SECTIONS:
        getattr(c, name).check()
    r, t, lo, tk = c.rollout, c.train, c.loss, c.tokens
    require(t.batch_size % r.group_size == 0,
            f"train.batch_size={t.batch_size} must be a positive multiple of rollout.group_size={r.group_size} "
            "(a group is scored together)")
    _check_mini_batches(t)
    require(t.max_seq_length > r.max_new_tokens,
            f"train.max_seq_length={t.max_seq_length} must exceed rollout.max_new_tokens")
    require(not c.reward_shaping.overlong_penalty or c.reward_shaping.overlong_cache_len < r.max_new_tokens,
            f"reward_shaping.overlong_cache_len={c.reward_shaping.overlong_cache_len}: use [0, rollout.max_new_tokens)")
    require(tk.credit == "none" or lo.policy != "gspo",
            f"tokens.credit={tk.credit} scales each token's advantage; loss.policy=gspo clips whole sequences: "
            "use ppo or dual_clip")
    require(lo.policy != "kl_cov" or t.num_iterations * t.mini_batches >= 2,
            "loss.policy=kl_cov penalizes |logp - old_logp|, which is 0 with one update per rollout: set "
            "train.num_iterations >= 2 or train.mini_batches >= 2")
    if lo.policy == "kl_cov" and lo.kl_cov_ratio * t.batch_size * r.max_new_tokens < 1:
        log.warning("loss.kl_cov_ratio=%g of a micro-batch's tokens is fewer than one even at full length (%d "
                    "completions x %d tokens): KL-Cov penalizes one token per micro-batch; raise loss.kl_cov_ratio "
                    "or train.batch_size", lo.kl_cov_ratio, t.batch_size, r.max_new_tokens)
    _validate_objective(c)
    _validate_env(c)
    require(bool(c.rewards) or c.env.active or c.data.task == "ecom",
            "rewards: expected a non-empty list of {name, weight, options} (only an environment's own reward, "
            "env.reward_weight, may stand alone)")
    for i, spec in enumerate(c.rewards):
        require(math.isfinite(spec.weight), f"rewards[{i}].weight={spec.weight}: must be finite")


def _check_mini_batches(t: TrainConfig) -> None:
    require(t.grad_accum_steps % t.mini_batches == 0,
            f"train.mini_batches={t.mini_batches} must divide train.grad_accum_steps={t.grad_accum_steps}: each "
            "optimizer step trains on an equal share of the step's micro-batches (with train.global_batch_prompts, "
            "grad_accum_steps is derived from the number of processes)")


def _validate_objective(c: Config) -> None:
    name = c.objective.name
    if name == "grpo":
        return
    require(c.loss.policy != "gspo", f"objective.name={name} gives each token its own signal; "
            "loss.policy=gspo clips whole sequences: use ppo or dual_clip")
    require(not c.rollout.dynamic_sampling and c.tokens.credit == "none" and c.advantage.estimator == "grpo",
            f"objective.name={name} takes its signal from a teacher, not from rewards: turn off "
            "rollout.dynamic_sampling and tokens.credit, and leave advantage.estimator at grpo")
    require(name != "distil" or c.train.num_iterations == 1,
            "objective.name=distil has no importance ratio to correct stale samples: set train.num_iterations=1")


def _validate_env(c: Config) -> None:
    e, task = c.env, c.data.task
    require(task != "ecom" or not (e.factory or e.factories),
            "data.task=ecom brings its own environments (data.ecom_environments): leave env.factory and "
            "env.factories empty")
    agents = e.active or task == "ecom"
    require(not agents or c.objective.name == "grpo",
            f"objective.name={c.objective.name} scores single completions; agents in environments train with grpo")
    require(not agents or not c.rollout.compile,
            "rollout.compile=true: the multi-turn rollout decodes turn by turn through the eager loop; set it false")
    require(not e.curriculum or task in ("ecom", "reasoning_gym"),
            f"env.curriculum=true needs rows with levels: data.task=ecom or reasoning_gym (data.task={task!r})")
    require(task not in ("ecom", "reasoning_gym") or c.train.max_steps > 0,
            f"data.task={task} makes its rows at each step, so there are no epochs: set train.max_steps")


def for_world(config: Config, world_size: int) -> Config:
    """The config as `world_size` processes run it: with train.global_batch_prompts set,
    grad_accum_steps is derived from it; an impossible split is an error naming both numbers."""
    t, g = config.train, config.rollout.group_size
    if world_size < 1:
        raise ConfigError(f"{world_size} processes: need at least one")
    if t.global_batch_prompts == 0:
        return config
    per_micro = t.batch_size // g  # prompts per micro-batch per rank
    per_pass = per_micro * world_size
    if t.global_batch_prompts % per_pass:
        raise ConfigError(
            f"train.global_batch_prompts={t.global_batch_prompts} is not a multiple of {per_pass} "
            f"(train.batch_size / rollout.group_size = {per_micro} prompts per micro-batch x {world_size} "
            f"processes); change train.global_batch_prompts, train.batch_size or the number of processes")
    accum = t.global_batch_prompts // per_pass
    if t.grad_accum_steps not in (1, accum):
        log.warning("train.grad_accum_steps=%d is replaced by %d: train.global_batch_prompts=%d over %d "
                    "process(es) fixes it", t.grad_accum_steps, accum, t.global_batch_prompts, world_size)
    train = dataclasses.replace(t, grad_accum_steps=accum)
    _check_mini_batches(train)
    return dataclasses.replace(config, train=train)


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (logged at start, saved beside checkpoints)."""
    return dataclasses.asdict(config)
