"""Recipe configuration: frozen dataclasses, one per concern, loaded from YAML with CLI overrides.

A recipe is a YAML mapping with the sections below. `key=value` overrides use dotted paths
(`train.learning_rate=1e-5`). Unknown sections or keys, wrong types and impossible values
are errors that name the key and the fix; everything is validated once, in `validate`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grpo.algorithm.advantages import ADVANTAGE_SCALES
from grpo.algorithm.loss import AGGREGATIONS, POLICY_LOSSES, check_policy_loss

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A recipe or override that cannot run; the message names the key and the fix."""


CPU_MATMUL = ("auto", "onednn", "torch")  # model.cpu_matmul (grpo/speedups/onednn_linear.py onednn_plan)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # model.dtype
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")  # model.attn_implementation
STRATEGIES = ("zero3", "ddp")  # train.strategy, with more than one process
REPORT_TO = ("tensorboard", "mlflow", "wandb")  # log.report_to
TOKEN_CREDIT = ("none", "paper", "proxy")  # variants.token_credit
OBJECTIVES = ("grpo", "opd", "distil")  # train.objective
HORIZONS = ("full", "truncated", "progressive")  # distill.horizon


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-demo"  # HF hub id, local HF folder, a .gguf file, or the demo alias
    gguf_file: str | None = None  # GGUF file name inside `name` when `name` is a folder or hub id
    dtype: str = "auto"  # weights/compute dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    load_in_4bit: bool = False  # QLoRA: bitsandbytes NF4 base weights (needs use_lora)
    use_lora: bool = True  # False = full fine-tuning (then beta > 0 keeps a frozen reference copy)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 16  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input; 0 keeps old/new log-probs comparable
    lora_target_modules: tuple[str, ...] = (  # attention and MLP projections (Llama/Qwen names)
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    gradient_checkpointing: bool = False  # trade compute for activation memory
    # float32 products on CPU: auto (oneDNN where the CPU has AVX-512, else the output head only:
    # grpo/speedups/onednn_linear.py onednn_plan) | onednn (all of them) | torch (MKL)
    cpu_matmul: str = "auto"
    # auto (flash_attention_2 on CUDA when the flash-attn package is installed, else sdpa) | sdpa | eager
    # | flash_attention_2 (needs `pip install flash-attn` and a CUDA GPU)
    attn_implementation: str = "auto"


@dataclass(frozen=True)
class DataConfig:
    task: str = "synthetic"  # gsm8k | synthetic | multihop | jsonl (prepared rows with prompt/answer)
    train_file: str | None = None  # local JSONL; gsm8k without it loads openai/gsm8k from the hub
    validation_file: str | None = None  # local JSONL; without it validation is split off train
    test_file: str | None = None  # gsm8k only: local test JSONL (else the hub's test split)
    eval_split: str = "validation"  # held-out rows evaluated before/after training: validation | test
    n_shot: int = 0  # few-shot exemplars in each prompt: 0, 1, 2, 4 or 8
    prompt_style: str = "chat"  # chat (instruct models, chat template) | plain (base models)
    difficulty: int = 1  # synthetic task only: 1 = one step, 2 = two steps, 3 = with products
    val_fraction: float = 0.1  # share of the training rows held out for validation
    limit_train: int | None = None  # use only the first N training rows
    limit_eval: int | None = None  # evaluate on the first N held-out rows
    on_bad_row: str = "error"  # error | skip (skipped rows are logged with their line)
    num_synthetic: int = 5000  # synthetic task only: problems generated
    multihop_hops: int = 2  # multihop task only: edges of each knowledge-graph walk (>= 2; 2-4 typical)
    num_multihop: int = 2000  # multihop task only: distinct questions generated
    multihop_entities: int = 1000  # multihop task only: entities in the synthetic knowledge graph (>= 25)
    multihop_passages: int = 8  # multihop task only: passages per context, gold ones included (>= hops)
    multihop_context_chars: int | None = None  # multihop task only: character cap on the passages; None = no cap


@dataclass(frozen=True)
class RewardSpec:
    name: str  # a name in the rewards registry (rewards.names())
    weight: float = 1.0  # weight in the total reward
    options: dict = field(default_factory=dict)  # keyword options bound to the reward function


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int = 8  # G: completions sampled per prompt
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass
    max_new_tokens: int = 256  # completion length cap; longer completions are truncated
    stop_strings: tuple[str, ...] = ("\n\nQuestion:",)  # text that ends a completion
    compile: bool = False  # decode steps through torch.compile over a static KV cache (CUDA graphs on a GPU)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # completions per micro-batch per device (a multiple of group_size)
    grad_accum_steps: int = 1  # micro-batches per optimizer step (derived when global_batch_prompts > 0)
    # prompts per optimizer step over all ranks; > 0 fixes it, so grad_accum_steps follows from the number
    # of processes (global / (batch_size / group_size x ranks)): the same training on 1 or 16 GPUs
    global_batch_prompts: int = 0
    strategy: str = "zero3"  # with more than one process: zero3 (DeepSpeed ZeRO-3) | ddp (replicated base)
    num_iterations: int = 1  # mu: policy updates per rollout batch (old log-probs used when > 1)
    # grpo (rewards -> group advantages) | opd (on-policy distillation from distill.teacher: per-token
    # reverse KL) | distil (DistIL: forward cross-entropy to the policy conditioned on rich feedback)
    objective: str = "grpo"
    epochs: float = 1.0  # passes over the training prompts (ignored when max_steps > 0)
    max_steps: int = 0  # rollout steps; 0 = derived from epochs
    learning_rate: float = 1e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    warmup_ratio: float = 0.0  # share of optimizer steps with linear warmup, then cosine decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    max_nonfinite_steps: int = 3  # steps in a row with a non-finite loss or gradient (skipped) before the run stops
    advantage_scale: str = "group"  # group | batch | none (Dr. GRPO)
    max_seq_length: int = 2048  # prompt + completion tokens; longer prompts are an error
    seed: int = 0  # seeds data order, sampling and initialization


@dataclass(frozen=True)
class LossConfig:
    """The per-token policy loss (grpo/algorithm/loss.py) and how it is reduced."""

    policy: str = "ppo"  # a name in grpo.algorithm.POLICY_LOSSES: ppo | dual_clip | gspo
    beta: float = 0.04  # KL penalty weight to the reference policy; 0 skips the reference pass
    eps_low: float = 0.2  # lower clip range of the ratio
    eps_high: float = 0.2  # upper clip range (> eps_low is DAPO clip-higher)
    dual_clip_c: float = 3.0  # dual_clip: cap on the loss of negative-advantage tokens, c > 1
    kl_cov_ratio: float = 0.0002  # kl_cov: share of tokens (largest logp/advantage covariance) penalized
    kl_cov_coef: float = 1.0  # kl_cov: weight of |logp - old_logp| on them
    aggregation: str = "seq-mean-token-mean"  # see grpo.algorithm.AGGREGATIONS


@dataclass(frozen=True)
class VariantsConfig:
    """Sampling, reward and token variants beyond plain GRPO; the defaults are plain GRPO."""

    overlong: str = "none"  # none | mask (truncated completions leave the loss) | soft (DAPO length penalty)
    overlong_cache_len: int = 16  # soft: the penalty ramps from 0 to -1 over the last N tokens
    entropy_top_fraction: float = 1.0  # < 1: only the highest-entropy tokens train (Wang et al. 2025)
    # DelTA token credit: none | paper (coefficients on token-gradient features, grpo/research/delta.py)
    # | proxy (the cheap token-id frequency proxy, grpo/research/token_credit.py)
    token_credit: str = "none"
    token_credit_min: float = 0.1  # proxy: weight of a token equally frequent in good and bad
    token_credit_max: float = 2.0  # proxy: weight of a token found on one side only
    delta_lam_min: float = 0.8  # paper: coefficient of a token on the wrong side of the discriminator (and A = 0)
    delta_lam_max: float = 1.2  # paper: coefficient of a token clearly on its own side
    delta_refine_steps: int = 1  # paper: refinements of the centroids with the soft scores (K)
    dynamic_sampling: bool = False  # DAPO: drop groups with equal rewards, draw more prompts
    dynamic_sampling_max_tries: int = 3  # extra draws per step before training on a short batch
    reward_weighting: str = "static"  # static | dynamic (POW3R: weight by within-group separation)
    reward_weighting_floor: float = 0.0  # dynamic: least share a criterion keeps
    self_certainty_weight: float = 0.0  # label-free: + weight x rank of self-certainty in the group
    # total (GRPO: the weighted total normalized in its group) | gdpo (each reward normalized in its group,
    # the weighted sum normalized over the batch; train.advantage_scale stays group)
    reward_normalization: str = "total"


@dataclass(frozen=True)
class DistillConfig:
    """The teacher and rollout horizon of train.objective=opd, and DistIL's settings (objective=distil)."""

    teacher: str = ""  # opd: HF hub id, local folder or the demo alias; "" = the student's base model.name
    teacher_adapter: str = ""  # opd: a PEFT adapter folder applied to the teacher (e.g. a run's final/adapter)
    # full | truncated (TOPD: horizon_fraction of rollout.max_new_tokens, every step) | progressive (POPD:
    # from horizon_fraction at step 1 growing linearly to the whole horizon over horizon_growth_steps)
    horizon: str = "full"
    horizon_fraction: float = 0.1  # truncated: share of rollout.max_new_tokens sampled; progressive: at step 1
    horizon_growth_steps: int = 0  # progressive: steps to reach the whole horizon; 0 = the run's steps
    top_k: int = 64  # distil: the teacher's most likely tokens kept per position (renormalized over them)
    future_weight: float = 1.0  # distil: weight of the sequence term (later cross-entropy credited to earlier tokens)


@dataclass(frozen=True)
class LogConfig:
    output_dir: str = "runs/demo"  # metrics, checkpoints, plots and the final adapter go here
    save_every: int = 1  # checkpoint every N steps (a kill loses at most N steps)
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 keeps all (trajectory extrapolation)
    eval_every: int = 0  # held-out evaluation every N steps; 0 = only before and after
    eval_before: bool = True  # evaluate before the first step too (false: only after, e.g. paired comparisons)
    eval_max_new_tokens: int = 0  # 0 = rollout.max_new_tokens
    eval_batch_size: int = 16  # prompts decoded together during evaluation
    accuracy_reward: str = "gsm8k_correctness"  # eval accuracy = share of rows scoring >= 1 on it
    report_to: tuple[str, ...] = ("tensorboard",)  # trackers beside metrics.jsonl: tensorboard | mlflow | wandb
    experiment: str = ""  # MLflow experiment / W&B project; "" = the recipe file's name
    completions_every: int = 1  # append sampled completions to completions.jsonl every N steps; 0 = never
    completions_per_step: int = 8  # completions logged per step (rounded up to whole groups)
    merge_final: bool = False  # also export the base model with the adapter merged in


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    variants: VariantsConfig = field(default_factory=VariantsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    rewards: tuple[RewardSpec, ...] = (
        RewardSpec("gsm8k_format", 1.0),
        RewardSpec("gsm8k_correctness", 1.0),
    )


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
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field (e.g. a reward's name) is missing
        raise ConfigError(f"{where}: {err}") from None


SECTIONS = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig,
            "train": TrainConfig, "loss": LossConfig, "log": LogConfig, "variants": VariantsConfig,
            "distill": DistillConfig}

# Keys that moved: old "section.key" -> new one. Recipes that use the old name keep working.
MOVED_KEYS = {
    "train.beta": "loss.beta",
    "train.eps_low": "loss.eps_low",
    "train.eps_high": "loss.eps_high",
    "train.loss_aggregation": "loss.aggregation",
    "variants.policy_loss": "loss.policy",
    "variants.dual_clip_c": "loss.dual_clip_c",
}


def _move_renamed_keys(raw: dict) -> dict:
    """A copy of `raw` with moved keys under their new names; a key given under both names is an error."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    section = merged.get("log")
    if isinstance(section, dict) and "tensorboard" in section:  # log.tensorboard: bool became log.report_to
        on = section.pop("tensorboard")
        current = section.get("report_to", ["tensorboard"])
        current = [current] if isinstance(current, str) else list(current or [])
        if on is True and "tensorboard" not in current:
            current.append("tensorboard")
        section["report_to"] = current if on is True else [t for t in current if t != "tensorboard"]
        log.warning("recipe key log.tensorboard is now log.report_to (a list: tensorboard, mlflow, wandb)")
    section = merged.get("variants")
    if isinstance(section, dict) and isinstance(section.get("token_credit"), bool):  # was a bool: the proxy
        section["token_credit"] = "proxy" if section["token_credit"] else "none"
        log.warning("variants.token_credit is now none | paper | proxy; true means proxy (the token-id proxy)")
    for old, new in MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        section = merged.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = merged.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # _build names the section that is not a mapping
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{old}={value!r} and {new}={target[new_key]!r}: {old} is the old name of {new}; "
                              f"keep only {new}")
        target[new_key] = value
        log.warning("recipe key %s is now %s; the old name still works, rename it", old, new)
    return merged


def config_from_dict(raw: dict) -> Config:
    """Build a validated Config from a recipe mapping."""
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"recipe: expected a mapping of sections, got {type(raw).__name__}")
    raw = _move_renamed_keys(raw or {})
    valid = list(SECTIONS) + ["rewards"]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"recipe: unknown section(s) {unknown}; valid sections: {', '.join(valid)}")
    parts = {name: _build(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    if "rewards" in raw:
        specs = raw["rewards"]
        if not isinstance(specs, list) or not specs:
            raise ConfigError("rewards: expected a non-empty list of {name, weight, options}")
        parts["rewards"] = tuple(_build(RewardSpec, s, f"rewards[{i}]") for i, s in enumerate(specs))
    config = Config(**parts)
    validate(config)
    return config


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with `section.key=value` overrides applied (values parsed as YAML).

    Moved keys are renamed first, in the recipe and in each override, so an override under
    either name replaces the recipe's value under either name.
    """
    merged = _move_renamed_keys(raw or {})
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key == "rewards":  # the whole list, e.g. rewards=[{name: gsm8k_format}]
            merged["rewards"] = yaml.safe_load(text)
            continue
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.beta=0.0")
        if key in MOVED_KEYS:
            log.warning("override %s is now %s; the old name still works, rename it", key, MOVED_KEYS[key])
            key = MOVED_KEYS[key]
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


def _require(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def validate(c: Config) -> None:
    """Check ranges and cross-field constraints once, at start."""
    m, d, r, t, lo, lg = c.model, c.data, c.rollout, c.train, c.loss, c.log
    _require(m.dtype in DTYPES, f"model.dtype={m.dtype!r}: use {', '.join(DTYPES)}")
    _require(m.attn_implementation in ATTENTION,
             f"model.attn_implementation={m.attn_implementation!r}: use {', '.join(ATTENTION)}")
    _require(m.cpu_matmul in CPU_MATMUL, f"model.cpu_matmul={m.cpu_matmul!r}: use auto, onednn or torch")
    _require(not m.load_in_4bit or m.use_lora,
             "model.load_in_4bit=true needs model.use_lora=true (4-bit weights cannot be trained)")
    _require(m.lora_r > 0 and m.lora_alpha > 0, "model.lora_r and model.lora_alpha must be > 0")
    _require(0 <= m.lora_dropout < 1, f"model.lora_dropout={m.lora_dropout}: use [0, 1)")
    _require(d.task in ("gsm8k", "synthetic", "multihop", "jsonl"),
             f"data.task={d.task!r}: use gsm8k, synthetic, multihop or jsonl")
    _require(d.task != "multihop" or d.n_shot == 0,
             f"data.n_shot={d.n_shot}: data.task=multihop takes 0 (the exemplars teach GSM8K's answer line)")
    _require(d.multihop_hops >= 2, f"data.multihop_hops={d.multihop_hops}: use >= 2 (a multi-hop question)")
    _require(d.num_multihop >= 1, f"data.num_multihop={d.num_multihop}: must be >= 1")
    _require(d.multihop_entities >= 25, f"data.multihop_entities={d.multihop_entities}: use >= 25")
    _require(d.multihop_passages >= d.multihop_hops,
             f"data.multihop_passages={d.multihop_passages}: use >= data.multihop_hops={d.multihop_hops} "
             "(one gold passage per hop)")
    _require(d.multihop_context_chars is None or d.multihop_context_chars > 0,
             f"data.multihop_context_chars={d.multihop_context_chars}: use a positive number or null (no cap)")
    _require(d.task != "jsonl" or d.train_file, "data.task=jsonl needs data.train_file")
    _require(d.n_shot in (0, 1, 2, 4, 8), f"data.n_shot={d.n_shot}: use 0, 1, 2, 4 or 8")
    _require(d.prompt_style in ("chat", "plain"),
             f"data.prompt_style={d.prompt_style!r}: use chat or plain")
    _require(0 <= d.val_fraction < 1, f"data.val_fraction={d.val_fraction}: use [0, 1)")
    _require(d.on_bad_row in ("error", "skip"), f"data.on_bad_row={d.on_bad_row!r}: use error or skip")
    _require(d.eval_split in ("validation", "test"),
             f"data.eval_split={d.eval_split!r}: use validation or test")
    _require(d.eval_split != "test" or d.task == "gsm8k",
             f"data.eval_split=test needs data.task=gsm8k (task {d.task!r} has no test split)")
    _require(r.group_size >= 2, f"rollout.group_size={r.group_size}: GRPO needs at least 2 per prompt")
    _require(r.temperature > 0, f"rollout.temperature={r.temperature}: must be > 0")
    _require(0 < r.top_p <= 1, f"rollout.top_p={r.top_p}: use (0, 1]")
    _require(r.max_new_tokens > 0, f"rollout.max_new_tokens={r.max_new_tokens}: must be > 0")
    _require(t.batch_size > 0 and t.batch_size % r.group_size == 0,
             f"train.batch_size={t.batch_size} must be a positive multiple of "
             f"rollout.group_size={r.group_size} (a group is scored together)")
    _require(t.grad_accum_steps >= 1, f"train.grad_accum_steps={t.grad_accum_steps}: must be >= 1")
    _require(t.global_batch_prompts >= 0, f"train.global_batch_prompts={t.global_batch_prompts}: must be >= 0 "
             "(0 = batch_size / group_size x grad_accum_steps x ranks)")
    _require(t.strategy in STRATEGIES, f"train.strategy={t.strategy!r}: use {', '.join(STRATEGIES)}")
    _require(t.num_iterations >= 1, f"train.num_iterations={t.num_iterations}: must be >= 1")
    _require(t.max_steps > 0 or t.epochs > 0, "set train.max_steps > 0 or train.epochs > 0")
    _require(t.seed >= 0, f"train.seed={t.seed}: must be >= 0")
    _require(t.learning_rate > 0 and math.isfinite(t.learning_rate),
             f"train.learning_rate={t.learning_rate}: must be a finite number > 0")
    _require(0 <= t.warmup_ratio < 1, f"train.warmup_ratio={t.warmup_ratio}: use [0, 1)")
    _require(t.max_grad_norm >= 0, f"train.max_grad_norm={t.max_grad_norm}: must be >= 0")
    _require(t.max_nonfinite_steps >= 1, f"train.max_nonfinite_steps={t.max_nonfinite_steps}: must be >= 1")
    _require(t.advantage_scale in ADVANTAGE_SCALES,
             f"train.advantage_scale={t.advantage_scale!r}: use {', '.join(ADVANTAGE_SCALES)}")
    _require(lo.beta >= 0, f"loss.beta={lo.beta}: must be >= 0")
    _require(0 <= lo.eps_low < 1 and lo.eps_high >= 0,
             f"loss.eps_low={lo.eps_low}, eps_high={lo.eps_high}: use 0 <= eps_low < 1, eps_high >= 0")
    _require(lo.aggregation in AGGREGATIONS,
             f"loss.aggregation={lo.aggregation!r}: use {', '.join(AGGREGATIONS)}")
    _require(lo.policy in POLICY_LOSSES, f"loss.policy={lo.policy!r}: use {', '.join(POLICY_LOSSES)}")
    _require(lo.dual_clip_c > 1, f"loss.dual_clip_c={lo.dual_clip_c}: must be > 1")
    if lo.policy in POLICY_LOSSES and lo.aggregation in AGGREGATIONS:
        problem = check_policy_loss(lo.policy, lo.aggregation)
        _require(problem is None, f"loss.policy={lo.policy}: {problem}; set loss.aggregation accordingly")
    _require(t.max_seq_length > r.max_new_tokens,
             f"train.max_seq_length={t.max_seq_length} must exceed rollout.max_new_tokens")
    _require(lg.eval_batch_size >= 1, f"log.eval_batch_size={lg.eval_batch_size}: must be >= 1")
    unknown_trackers = [t for t in lg.report_to if t not in REPORT_TO]
    _require(not unknown_trackers, f"log.report_to={list(lg.report_to)}: unknown {unknown_trackers}; use any of "
             f"{', '.join(REPORT_TO)}")
    _require(lg.completions_every >= 0 and lg.completions_per_step >= 0,
             "log.completions_every and log.completions_per_step must be >= 0")
    _require(lg.save_every >= 1 and lg.keep_checkpoints >= 0,
             "log.save_every must be >= 1 and log.keep_checkpoints >= 0")
    v = c.variants
    _require(v.overlong in ("none", "mask", "soft"), f"variants.overlong={v.overlong!r}: use none, mask or soft")
    _require(v.overlong != "soft" or 0 <= v.overlong_cache_len < r.max_new_tokens,
             f"variants.overlong_cache_len={v.overlong_cache_len}: use [0, rollout.max_new_tokens)")
    _require(0 < v.entropy_top_fraction <= 1,
             f"variants.entropy_top_fraction={v.entropy_top_fraction}: use (0, 1]")
    _require(v.token_credit in TOKEN_CREDIT, f"variants.token_credit={v.token_credit!r}: use {', '.join(TOKEN_CREDIT)}")
    _require(0 < v.delta_lam_min <= v.delta_lam_max and v.delta_refine_steps >= 0,
             "variants.delta_lam_min/max/refine_steps: need 0 < lam_min <= lam_max and refine_steps >= 0")
    _require(v.token_credit != "paper" or lo.policy != "gspo",
             "variants.token_credit=paper scales each token's advantage; loss.policy=gspo clips whole sequences: "
             "use ppo or dual_clip")
    _require(0 < v.token_credit_min <= v.token_credit_max,
             "variants.token_credit_min/max: need 0 < min <= max")
    _require(v.dynamic_sampling_max_tries >= 0, "variants.dynamic_sampling_max_tries must be >= 0")
    _require(v.reward_weighting in ("static", "dynamic"),
             f"variants.reward_weighting={v.reward_weighting!r}: use static or dynamic")
    _require(0 <= v.reward_weighting_floor < 1, "variants.reward_weighting_floor: use [0, 1)")
    _require(v.self_certainty_weight >= 0, "variants.self_certainty_weight must be >= 0")
    _require(v.reward_normalization in ("total", "gdpo"),
             f"variants.reward_normalization={v.reward_normalization!r}: use total or gdpo")
    _require(v.reward_normalization != "gdpo" or t.advantage_scale == "group",
             f"variants.reward_normalization=gdpo normalizes each reward in its group and then the batch; "
             f"train.advantage_scale={t.advantage_scale!r} would be a second normalization: leave it at group")
    _require(lo.kl_cov_ratio > 0 and lo.kl_cov_ratio <= 1 and lo.kl_cov_coef >= 0,
             f"loss.kl_cov_ratio={lo.kl_cov_ratio} (use (0, 1]) and loss.kl_cov_coef={lo.kl_cov_coef} (use >= 0)")
    _require(lo.policy != "kl_cov" or t.num_iterations >= 2,
             "loss.policy=kl_cov penalizes |logp - old_logp|, which is 0 with one update per rollout: set "
             "train.num_iterations >= 2")
    _validate_objective(c)
    for i, spec in enumerate(c.rewards):
        _require(math.isfinite(spec.weight), f"rewards[{i}].weight={spec.weight}: must be finite")


def _validate_objective(c: Config) -> None:
    t, ds, v = c.train, c.distill, c.variants
    _require(t.objective in OBJECTIVES, f"train.objective={t.objective!r}: use {', '.join(OBJECTIVES)}")
    _require(ds.horizon in HORIZONS, f"distill.horizon={ds.horizon!r}: use {', '.join(HORIZONS)}")
    _require(0 < ds.horizon_fraction <= 1, f"distill.horizon_fraction={ds.horizon_fraction}: use (0, 1]")
    _require(ds.horizon_growth_steps >= 0, f"distill.horizon_growth_steps={ds.horizon_growth_steps}: must be >= 0")
    _require(ds.top_k >= 1, f"distill.top_k={ds.top_k}: must be >= 1")
    _require(ds.future_weight >= 0, f"distill.future_weight={ds.future_weight}: must be >= 0")
    _require(t.objective == "opd" or (ds.teacher == "" and ds.teacher_adapter == ""),
             f"distill.teacher/teacher_adapter are the on-policy distillation teacher: set train.objective=opd "
             f"(train.objective={t.objective!r})")
    _require(t.objective == "opd" or ds.horizon == "full",
             f"distill.horizon={ds.horizon!r} shortens on-policy distillation rollouts; with train.objective="
             f"{t.objective!r} a cut completion would be scored as wrong: set train.objective=opd")
    if t.objective == "grpo":
        return
    _require(c.loss.policy != "gspo", f"train.objective={t.objective} gives each token its own signal; "
             "loss.policy=gspo clips whole sequences: use ppo or dual_clip")
    _require(not v.dynamic_sampling and v.token_credit == "none" and v.reward_normalization == "total",
             f"train.objective={t.objective} takes its signal from a teacher, not from rewards: turn off "
             "variants.dynamic_sampling, token_credit and reward_normalization=gdpo")
    _require(t.objective != "distil" or t.num_iterations == 1,
             "train.objective=distil has no importance ratio to correct stale samples: set train.num_iterations=1")


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
    return dataclasses.replace(config, train=dataclasses.replace(t, grad_accum_steps=accum))


def to_dict(config: Config) -> dict:
    """The resolved config as plain data (logged at start, saved beside checkpoints)."""
    return dataclasses.asdict(config)
