"""Setup: everything a run holds from its first step to its last, built once from the resolved recipe."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from grpo.backends import Launch, create_backend
from grpo.objectives import Objective, ObjectiveSetup, build_objective, loss_settings
from grpo.objectives.base import LossSettings
from grpo.rollout import rewarding
from grpo.rollout.logprobs import LogProbPlan
from grpo.runtime.config import Config, ConfigError
from grpo.runtime.distributed import parameter_counts
from grpo.runtime.model import trainable_parameters
from grpo.training.agents import Agents, build_agents, build_curriculum
from grpo.training.policy import build_policy, make_optimizer, seed_everything
from grpo.training.prompts import LeveledRows, PromptSet, load_prompt_sets
from grpo.training.rollouts import prompts_per_step
from grpo.training.update import logprob_plan

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A training run's parts: the recipe as this world runs it, the backend around the policy, the
    objective, the rewards, the prompts, and how the step's passes run."""

    cfg: Config
    launch: Launch
    backend: object  # grpo/backends: SingleProcess, DataParallel or DeepSpeedZero3
    model: object
    tokenizer: object
    objective: Objective
    rewards: list[rewarding.WeightedReward]
    train_prompts: PromptSet | LeveledRows
    eval_prompts: PromptSet
    loss: LossSettings
    plan: LogProbPlan
    prompts_per_step: int  # all ranks together
    total_steps: int
    agents: Agents | None = None  # environments, for a multi-turn recipe (grpo/training/agents.py)
    curriculum: object | None = None  # RLVE's (grpo.environments.Curriculum), for rows with levels

    def extra_state(self) -> dict:
        """What a checkpoint holds besides the adapter and the optimizer: the curriculum's state."""
        return {"curriculum": self.curriculum.state_dict()} if self.curriculum is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.curriculum is not None:
            if "curriculum" not in state:
                raise ConfigError("the checkpoint holds no curriculum state; resume with env.curriculum=false, or "
                                  "start fresh with --no-resume")
            self.curriculum.load_state_dict(state["curriculum"])

    @property
    def world(self):
        return self.launch.world


def build_run(cfg: Config, launch: Launch,
              prompts: Callable[[object], tuple[PromptSet, PromptSet]] | None = None) -> Run:
    """Seed, resolve the rewards (unknown names fail before any loading), load the policy, the prompts
    (prompts(tokenizer) -> (train, eval); default: the recipe's data), the optimizer, the backend and
    the objective."""
    t, world = cfg.train, launch.world
    seed_everything(t.seed)
    reward_fns = rewarding.build_rewards(cfg.rewards)
    model, tokenizer, reference = build_policy(cfg, launch.device, adapter_in_compute_dtype=launch.strategy == "zero3")
    params = trainable_parameters(model)
    agents, curriculum = build_agents(cfg, tokenizer), build_curriculum(cfg)
    if agents is not None:
        reward_fns = [*reward_fns, agents.reward]
    train_prompts, eval_prompts = (prompts or (lambda tok: load_prompt_sets(cfg, tok, curriculum)))(tokenizer)
    per_step = prompts_per_step(cfg, world)
    total_steps = t.max_steps or math.ceil(t.epochs * len(train_prompts) / per_step)
    optimizer, scheduler = make_optimizer(params, t, total_steps * t.num_iterations * t.mini_batches)
    backend = create_backend(cfg, launch, model, reference, optimizer, scheduler)
    rows = train_prompts.rows if isinstance(train_prompts, PromptSet) else []  # rows made per step: none fixed
    objective = build_objective(cfg, ObjectiveSetup(launch.replica_device, tokenizer, rows, total_steps))
    trainable, every = parameter_counts(model)
    log.info("%d train prompts, %d eval prompts, %d steps; trainable parameters: %d of %d (%.3f%%)",
             len(train_prompts), len(eval_prompts), total_steps, trainable, every, 100 * trainable / max(every, 1))
    if launch.why:
        log.info("%s", launch.why)
    log.info("global batch: %d prompts x %d = %d completions per optimizer step (%s over %d process(es): "
             "%d prompts per micro-batch x %d micro-batches each)", per_step, cfg.rollout.group_size,
             per_step * cfg.rollout.group_size, launch.strategy, world.size, t.batch_size // cfg.rollout.group_size,
             t.grad_accum_steps)
    return Run(cfg, launch, backend, model, tokenizer, objective, reward_fns, train_prompts, eval_prompts,
               loss_settings(cfg), logprob_plan(cfg), per_step, total_steps, agents, curriculum)
