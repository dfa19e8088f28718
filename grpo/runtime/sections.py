"""The recipe's sections: one frozen dataclass per concern, each field commented, each section
checking its own fields (`check`). Checks that span sections live in config.py (`validate`).

A check raises ConfigError naming the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from grpo.algorithm.advantages import ADVANTAGE_ESTIMATORS, ADVANTAGE_SCALES
from grpo.algorithm.loss import (
    AGGREGATIONS, POLICY_LOSSES, ROLLOUT_CORRECTIONS, check_clip, check_policy_loss, clip_bounds,
)


class ConfigError(ValueError):
    """A recipe or override that cannot run; the message names the key and the fix."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(value, choices, key: str) -> None:
    require(value in choices, f"{key}={value!r}: use {', '.join(map(str, choices))}")


CPU_MATMUL = ("auto", "onednn", "torch")  # model.cpu_matmul (grpo/speedups/onednn_linear.py onednn_plan)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # model.dtype
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")  # model.attn_implementation
TASKS = ("gsm8k", "synthetic", "multihop", "jsonl", "ecom", "reasoning_gym")  # data.task
CHAT_TEMPLATES = ("auto", "model", "chatml_tools")  # env.chat_template
STRATEGIES = ("auto", "zero3", "ddp")  # train.strategy, with more than one process
REPORT_TO = ("tensorboard", "mlflow", "wandb")  # log.report_to
TOKEN_CREDITS = ("none", "paper", "proxy")  # tokens.credit (grpo/objectives/token_credit.py)
OBJECTIVES = ("grpo", "opd", "distil")  # objective.name (grpo/objectives, one module each)
HORIZONS = ("full", "truncated", "progressive")  # objective.horizon
REWARD_WEIGHTINGS = ("static", "dynamic")  # reward_shaping.weighting


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

    def check(self) -> None:
        one_of(self.dtype, DTYPES, "model.dtype")
        one_of(self.attn_implementation, ATTENTION, "model.attn_implementation")
        require(self.cpu_matmul in CPU_MATMUL, f"model.cpu_matmul={self.cpu_matmul!r}: use auto, onednn or torch")
        require(not self.load_in_4bit or self.use_lora,
                "model.load_in_4bit=true needs model.use_lora=true (4-bit weights cannot be trained)")
        require(self.lora_r > 0 and self.lora_alpha > 0, "model.lora_r and model.lora_alpha must be > 0")
        require(0 <= self.lora_dropout < 1, f"model.lora_dropout={self.lora_dropout}: use [0, 1)")


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
    # ecom task only: the e-commerce environments its rows cycle through (grpo/environments/ecom)
    ecom_environments: tuple[str, ...] = ("discovery", "cart", "returns", "tracking")
    ecom_eval_level: int = 0  # ecom task only: the level of the held-out episodes
    reasoning_gym_datasets: tuple[str, ...] = ()  # reasoning_gym task only: reasoning-gym dataset names
    reasoning_gym_weights: tuple[float, ...] = ()  # reasoning_gym task only: their sampling weights (empty = equal)

    def check(self) -> None:
        one_of(self.task, TASKS, "data.task")
        require(self.task != "reasoning_gym" or bool(self.reasoning_gym_datasets),
                "data.task=reasoning_gym needs data.reasoning_gym_datasets (e.g. [basic_arithmetic, leg_counting])")
        require(not self.reasoning_gym_weights or len(self.reasoning_gym_weights) == len(self.reasoning_gym_datasets),
                "data.reasoning_gym_weights: one weight per dataset of data.reasoning_gym_datasets, or none (equal)")
        require(self.task not in ("ecom", "reasoning_gym") or self.n_shot == 0,
                f"data.n_shot={self.n_shot}: data.task={self.task} takes 0 (its rows are made at each step)")
        require(self.task != "multihop" or self.n_shot == 0,
                f"data.n_shot={self.n_shot}: data.task=multihop takes 0 (the exemplars teach GSM8K's answer line)")
        require(self.multihop_hops >= 2, f"data.multihop_hops={self.multihop_hops}: use >= 2 (a multi-hop question)")
        require(self.num_multihop >= 1, f"data.num_multihop={self.num_multihop}: must be >= 1")
        require(self.multihop_entities >= 25, f"data.multihop_entities={self.multihop_entities}: use >= 25")
        require(self.multihop_passages >= self.multihop_hops,
                f"data.multihop_passages={self.multihop_passages}: use >= data.multihop_hops={self.multihop_hops} "
                "(one gold passage per hop)")
        require(self.multihop_context_chars is None or self.multihop_context_chars > 0,
                f"data.multihop_context_chars={self.multihop_context_chars}: use a positive number or null (no cap)")
        require(self.task != "jsonl" or bool(self.train_file), "data.task=jsonl needs data.train_file")
        require(self.n_shot in (0, 1, 2, 4, 8), f"data.n_shot={self.n_shot}: use 0, 1, 2, 4 or 8")
        one_of(self.prompt_style, ("chat", "plain"), "data.prompt_style")
        require(0 <= self.val_fraction < 1, f"data.val_fraction={self.val_fraction}: use [0, 1)")
        one_of(self.on_bad_row, ("error", "skip"), "data.on_bad_row")
        one_of(self.eval_split, ("validation", "test"), "data.eval_split")
        require(self.eval_split != "test" or self.task == "gsm8k",
                f"data.eval_split=test needs data.task=gsm8k (task {self.task!r} has no test split)")


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
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, draw more prompts
    dynamic_sampling_max_tries: int = 3  # extra draws per step before training on a short batch

    def check(self) -> None:
        require(self.group_size >= 2, f"rollout.group_size={self.group_size}: GRPO needs at least 2 per prompt")
        require(self.temperature > 0, f"rollout.temperature={self.temperature}: must be > 0")
        require(0 < self.top_p <= 1, f"rollout.top_p={self.top_p}: use (0, 1]")
        require(self.max_new_tokens > 0, f"rollout.max_new_tokens={self.max_new_tokens}: must be > 0")
        require(self.dynamic_sampling_max_tries >= 0, "rollout.dynamic_sampling_max_tries must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # completions per micro-batch per device (a multiple of group_size)
    grad_accum_steps: int = 1  # micro-batches per optimizer step (derived when global_batch_prompts > 0)
    # prompts per optimizer step over all ranks; > 0 fixes it, so grad_accum_steps follows from the number
    # of processes (global / (batch_size / group_size x ranks)): the same training on 1 or 16 GPUs
    global_batch_prompts: int = 0
    # with more than one process: auto (ddp when the frozen base fits on every device, else zero3:
    # grpo/backends/strategy.py) | zero3 (DeepSpeed ZeRO-3) | ddp (the base replicated, the adapter's gradients averaged)
    strategy: str = "auto"
    # optimizer steps per pass over a rollout, each on its own 1/mini_batches of the groups (verl's
    # train_batch_size / ppo_mini_batch_size; TRL's steps_per_generation / gradient_accumulation_steps): a
    # divisor of grad_accum_steps, whose micro-batches split evenly between them
    mini_batches: int = 1
    num_iterations: int = 1  # mu: passes over the mini-batches (old log-probs kept when mu x mini_batches > 1)
    epochs: float = 1.0  # passes over the training prompts (ignored when max_steps > 0)
    max_steps: int = 0  # rollout steps; 0 = derived from epochs
    learning_rate: float = 1e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    warmup_ratio: float = 0.0  # share of optimizer steps with linear warmup, then cosine decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    max_nonfinite_steps: int = 3  # steps in a row with a non-finite loss or gradient (skipped) before the run stops
    max_seq_length: int = 2048  # prompt + completion tokens; longer prompts are an error
    seed: int = 0  # seeds data order, sampling and initialization

    def check(self) -> None:
        require(self.batch_size > 0, f"train.batch_size={self.batch_size} must be a positive multiple of "
                "rollout.group_size (completions per micro-batch per device)")
        require(self.grad_accum_steps >= 1, f"train.grad_accum_steps={self.grad_accum_steps}: must be >= 1")
        require(self.global_batch_prompts >= 0, f"train.global_batch_prompts={self.global_batch_prompts}: must be "
                ">= 0 (0 = batch_size / group_size x grad_accum_steps x ranks)")
        one_of(self.strategy, STRATEGIES, "train.strategy")
        require(self.num_iterations >= 1, f"train.num_iterations={self.num_iterations}: must be >= 1")
        require(self.mini_batches >= 1, f"train.mini_batches={self.mini_batches}: must be >= 1")
        require(self.max_steps > 0 or self.epochs > 0, "set train.max_steps > 0 or train.epochs > 0")
        require(self.seed >= 0, f"train.seed={self.seed}: must be >= 0")
        require(self.learning_rate > 0 and math.isfinite(self.learning_rate),
                f"train.learning_rate={self.learning_rate}: must be a finite number > 0")
        require(0 <= self.warmup_ratio < 1, f"train.warmup_ratio={self.warmup_ratio}: use [0, 1)")
        require(self.max_grad_norm >= 0, f"train.max_grad_norm={self.max_grad_norm}: must be >= 0")
        require(self.max_nonfinite_steps >= 1, f"train.max_nonfinite_steps={self.max_nonfinite_steps}: must be >= 1")


@dataclass(frozen=True)
class RewardShapingConfig:
    """What is done to the recipe's rewards before the advantage: their weights, extra reward terms."""

    weighting: str = "static"  # static (the recipe's weights) | dynamic (POW3R: by within-group separation)
    weighting_floor: float = 0.0  # dynamic: least share a criterion keeps
    self_certainty_weight: float = 0.0  # label-free: + weight x rank of self-certainty in the group
    overlong_penalty: bool = False  # DAPO's soft length penalty over the last overlong_cache_len tokens
    overlong_cache_len: int = 16  # overlong_penalty: the penalty ramps from 0 to -1 over the last N tokens

    def check(self) -> None:
        one_of(self.weighting, REWARD_WEIGHTINGS, "reward_shaping.weighting")
        require(0 <= self.weighting_floor < 1, f"reward_shaping.weighting_floor={self.weighting_floor}: use [0, 1)")
        require(self.self_certainty_weight >= 0, "reward_shaping.self_certainty_weight must be >= 0")
        require(self.overlong_cache_len >= 0, "reward_shaping.overlong_cache_len must be >= 0")


@dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become advantages (grpo/algorithm/advantages.py ADVANTAGE_ESTIMATORS)."""

    # grpo (the weighted total normalized in its group) | gdpo (each reward normalized in its group, the
    # weighted sum normalized over the batch) | rloo (leave-one-out baseline) | reinforce_pp (REINFORCE++ with
    # the group-mean baseline, whitened over the batch's tokens)
    estimator: str = "grpo"
    scale: str = "group"  # grpo only: group | batch | none (Dr. GRPO: no std)

    def check(self) -> None:
        one_of(self.estimator, tuple(ADVANTAGE_ESTIMATORS), "advantage.estimator")
        one_of(self.scale, ADVANTAGE_SCALES, "advantage.scale")
        require(self.estimator != "gdpo" or self.scale == "group",
                f"advantage.estimator=gdpo normalizes each reward in its group and then the batch; "
                f"advantage.scale={self.scale!r} would be a second normalization: leave it at group")
        require(self.estimator in ("grpo", "gdpo") or self.scale == "group",
                f"advantage.scale={self.scale!r} is GRPO's std choice; advantage.estimator={self.estimator} has its "
                "own normalization: leave advantage.scale at group")


@dataclass(frozen=True)
class TokensConfig:
    """Which completion tokens train, and with what credit."""

    overlong_mask: bool = False  # DAPO: truncated completions leave the loss
    entropy_top_fraction: float = 1.0  # < 1: only the highest-entropy tokens train (Wang et al. 2025)
    # DelTA token credit on the advantage: none | paper (coefficients on token-gradient features,
    # grpo/research/delta.py) | proxy (the token-id frequency proxy, grpo/research/token_credit.py)
    credit: str = "none"
    credit_min: float = 0.1  # proxy: weight of a token equally frequent in good and bad
    credit_max: float = 2.0  # proxy: weight of a token found on one side only
    delta_lam_min: float = 0.8  # paper: coefficient of a token on the wrong side of the discriminator (and A = 0)
    delta_lam_max: float = 1.2  # paper: coefficient of a token clearly on its own side
    delta_refine_steps: int = 1  # paper: refinements of the centroids with the soft scores (K)

    def check(self) -> None:
        require(0 < self.entropy_top_fraction <= 1,
                f"tokens.entropy_top_fraction={self.entropy_top_fraction}: use (0, 1]")
        one_of(self.credit, TOKEN_CREDITS, "tokens.credit")
        require(0 < self.credit_min <= self.credit_max, "tokens.credit_min/max: need 0 < min <= max")
        require(0 < self.delta_lam_min <= self.delta_lam_max and self.delta_refine_steps >= 0,
                "tokens.delta_lam_min/max/refine_steps: need 0 < lam_min <= lam_max and refine_steps >= 0")


@dataclass(frozen=True)
class LossConfig:
    """The per-token policy loss (grpo/algorithm/loss.py) and how it is reduced."""

    policy: str = "ppo"  # a name in grpo.algorithm.POLICY_LOSSES: ppo | dual_clip | gspo | cispo | kl_cov
    beta: float = 0.04  # KL penalty weight to the reference policy; 0 skips the reference pass
    # the ratio's clip range [1 - eps_low, 1 + eps_high] (eps_high > eps_low is DAPO clip-higher); unset = the
    # policy loss's own: 0.2/0.2 (ppo, dual_clip), 3e-4/4e-4 (gspo, its paper's), cispo's weight cap 1 + 4.0
    eps_low: float | None = None
    eps_high: float | None = None
    dual_clip_c: float = 3.0  # dual_clip: cap on the loss of negative-advantage tokens, c > 1
    kl_cov_ratio: float = 0.002  # kl_cov: share of tokens (largest logp/advantage covariance) penalized (its paper's)
    kl_cov_coef: float = 1.0  # kl_cov: weight of |logp - old_logp| on them
    aggregation: str = "seq-mean-token-mean"  # see grpo.algorithm.AGGREGATIONS
    entropy_coef: float = 0.0  # entropy bonus: - coef x the policy's entropy at each trained token (verl's)
    # the sampler/trainer log-prob mismatch: none | tis (per-token weights min(rho, cap)) | mis (a sequence's
    # weight rho, 0 above cap), as TRL's token_truncate / sequence_mask (grpo/algorithm/loss.py)
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0  # the cap C of tis/mis (verl's and Yao et al.'s 2)

    def check(self) -> None:
        require(self.beta >= 0, f"loss.beta={self.beta}: must be >= 0")
        one_of(self.rollout_correction, ROLLOUT_CORRECTIONS, "loss.rollout_correction")
        require(self.rollout_correction_cap > 0, f"loss.rollout_correction_cap={self.rollout_correction_cap}: > 0")
        require(self.entropy_coef >= 0, f"loss.entropy_coef={self.entropy_coef}: must be >= 0")
        one_of(self.aggregation, tuple(AGGREGATIONS), "loss.aggregation")
        one_of(self.policy, tuple(POLICY_LOSSES), "loss.policy")
        low, high = clip_bounds(self.policy, self.eps_low, self.eps_high)
        require(0 <= low < 1 and high >= 0,
                f"loss.eps_low={low}, eps_high={high}: use 0 <= eps_low < 1, eps_high >= 0")
        problem = check_clip(self.policy, self.eps_low, self.eps_high)
        require(problem is None, f"loss.policy={self.policy}: {problem}")
        require(self.dual_clip_c > 1, f"loss.dual_clip_c={self.dual_clip_c}: must be > 1")
        problem = check_policy_loss(self.policy, self.aggregation)
        require(problem is None, f"loss.policy={self.policy}: {problem}; set loss.aggregation accordingly")
        require(0 < self.kl_cov_ratio <= 1 and self.kl_cov_coef >= 0,
                f"loss.kl_cov_ratio={self.kl_cov_ratio} (use (0, 1]) and loss.kl_cov_coef={self.kl_cov_coef} "
                "(use >= 0)")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the update trains towards (grpo/objectives): the rewards' advantages, or a teacher."""

    # grpo (rewards -> group advantages) | opd (on-policy distillation from `teacher`: per-token reverse KL)
    # | distil (DistIL: forward cross-entropy to the policy conditioned on rich feedback)
    name: str = "grpo"
    teacher: str = ""  # opd: HF hub id, local folder or the demo alias; "" = the student's base model.name
    teacher_adapter: str = ""  # opd: a PEFT adapter folder applied to the teacher (e.g. a run's final/adapter)
    # opd: full | truncated (TOPD: horizon_fraction of rollout.max_new_tokens, every step) | progressive
    # (POPD: from horizon_fraction at step 1 growing linearly to the whole horizon over horizon_growth_steps)
    horizon: str = "full"
    horizon_fraction: float = 0.1  # truncated: share of rollout.max_new_tokens sampled; progressive: at step 1
    horizon_growth_steps: int = 0  # progressive: steps to reach the whole horizon; 0 = the run's steps
    top_k: int = 64  # distil: the teacher's most likely tokens kept per position (renormalized over them)
    future_weight: float = 1.0  # distil: weight of the sequence term (later cross-entropy credited to earlier tokens)

    def check(self) -> None:
        one_of(self.name, OBJECTIVES, "objective.name")
        one_of(self.horizon, HORIZONS, "objective.horizon")
        require(0 < self.horizon_fraction <= 1, f"objective.horizon_fraction={self.horizon_fraction}: use (0, 1]")
        require(self.horizon_growth_steps >= 0,
                f"objective.horizon_growth_steps={self.horizon_growth_steps}: must be >= 0")
        require(self.top_k >= 1, f"objective.top_k={self.top_k}: must be >= 1")
        require(self.future_weight >= 0, f"objective.future_weight={self.future_weight}: must be >= 0")
        require(self.name == "opd" or (self.teacher == "" and self.teacher_adapter == ""),
                f"objective.teacher/teacher_adapter are the on-policy distillation teacher: set objective.name=opd "
                f"(objective.name={self.name!r})")
        require(self.name == "opd" or self.horizon == "full",
                f"objective.horizon={self.horizon!r} shortens on-policy distillation rollouts; with objective.name="
                f"{self.name!r} a cut completion would be scored as wrong: set objective.name=opd")


@dataclass(frozen=True)
class EnvConfig:
    """Agents acting in environments over several turns (grpo/environments, grpo/rollout/agent.py). Empty
    factory and tools = single-turn (one prompt, one completion)."""

    # a TRL-convention environment class, "package.module:Class", or several by name ({name: "module:Class"},
    # each row's `environment` field picking one); data.task=ecom sets the e-commerce gym's four
    factory: str = ""
    factories: dict = field(default_factory=dict)
    tools: tuple[str, ...] = ()  # stateless tools, "package.module:function"
    max_turns: int = 4  # assistant turns per episode; the episode also ends on a turn without a tool call
    tool_timeout_s: float = 10.0  # a tool call running longer is abandoned and the model reads a timeout error
    max_calls_per_turn: int = 8  # calls beyond this in one turn are refused (the model reads why)
    reward_weight: float = 1.0  # weight of the environment's get_reward() beside the recipe's rewards
    success_threshold: float = 0.5  # an episode succeeds at this reward (for environments without `success`)
    # the chat template that renders tools: auto (the model's if it renders tool calls, else chatml_tools for a
    # ChatML tokenizer) | model | chatml_tools (grpo/environments/chat.py CHATML_TOOL_TEMPLATE)
    chat_template: str = "auto"
    # RLVE adaptive difficulty (grpo/environments/curriculum.py), for tasks whose rows have levels
    # (data.task=ecom, reasoning_gym): each environment's range [high - window + 1, high] moves up when the
    # success rate at `high` over curriculum_min_episodes episodes reaches curriculum_promote_at
    curriculum: bool = False
    curriculum_max_level: int = 8
    curriculum_start_level: int = 0
    curriculum_window: int = 4
    curriculum_promote_at: float = 0.9
    curriculum_demote_below: float | None = None  # move down below this success rate; None: never (RLVE)
    curriculum_min_episodes: int = 16

    @property
    def active(self) -> bool:
        return bool(self.factory or self.factories or self.tools)

    def check(self) -> None:
        require(not (self.factory and self.factories), "env.factory and env.factories: give one of them")
        require(self.max_turns >= 1, f"env.max_turns={self.max_turns}: must be >= 1")
        require(self.tool_timeout_s > 0, f"env.tool_timeout_s={self.tool_timeout_s}: must be > 0")
        require(self.max_calls_per_turn >= 1, f"env.max_calls_per_turn={self.max_calls_per_turn}: must be >= 1")
        require(math.isfinite(self.reward_weight), f"env.reward_weight={self.reward_weight}: must be finite")
        one_of(self.chat_template, CHAT_TEMPLATES, "env.chat_template")
        require(0 <= self.curriculum_start_level <= self.curriculum_max_level,
                "env.curriculum_start_level must be in [0, env.curriculum_max_level]")
        require(self.curriculum_window >= 1 and self.curriculum_min_episodes >= 1,
                "env.curriculum_window and env.curriculum_min_episodes must be >= 1")
        require(0 < self.curriculum_promote_at <= 1, "env.curriculum_promote_at: use (0, 1]")
        require(self.curriculum_demote_below is None or 0 <= self.curriculum_demote_below < self.curriculum_promote_at,
                "env.curriculum_demote_below: use [0, env.curriculum_promote_at) or null (never move down)")


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

    def check(self) -> None:
        require(self.eval_batch_size >= 1, f"log.eval_batch_size={self.eval_batch_size}: must be >= 1")
        unknown = [t for t in self.report_to if t not in REPORT_TO]
        require(not unknown, f"log.report_to={list(self.report_to)}: unknown {unknown}; use any of "
                f"{', '.join(REPORT_TO)}")
        require(self.completions_every >= 0 and self.completions_per_step >= 0,
                "log.completions_every and log.completions_per_step must be >= 0")
        require(self.save_every >= 1 and self.keep_checkpoints >= 0,
                "log.save_every must be >= 1 and log.keep_checkpoints >= 0")
