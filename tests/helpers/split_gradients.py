"""The adapter's gradient of one optimizer step for every (aggregation, policy loss) pair, on one fixed
rollout cut some way: the evidence that the loss does not depend on how a step is cut.

In one process: `gradients(model_dir, dtype, prompts_per_micro_batch)`. Across processes:
`python -m torch.distributed.run --nproc_per_node 2 -m tests.helpers.split_gradients MODEL_DIR OUT ddp|zero3`
(each rank trains on its contiguous share of the prompts, one prompt per micro-batch; rank 0 writes
OUT, {"aggregation/policy": {"grads": {parameter name: gradient}, "means": logged token means}}).

The rollout: 4 prompts x G = 2 with completions of unequal lengths (so micro-batches and ranks hold
different token counts), fixed advantages, and old log-probs that put the ratio on both sides of the
clip range, so every loss's clipping acts. The learning rate is 0: the backend steps, nothing moves,
and the next pair sees the same adapter.
"""

from __future__ import annotations

import sys

import torch

from grpo.algorithm.loss import AGGREGATIONS, POLICY_LOSSES, ClipRange, check_policy_loss
from grpo.objectives import LossSettings, Targets
from grpo.objectives.grpo import GrpoObjective
from grpo.objectives.token_credit import TokenCredit
from grpo.rollout.batch import RolloutBatch
from grpo.rollout.logprobs import LogProbPass, LogProbPlan, frozen_logprobs
from grpo.runtime.config import TokensConfig
from grpo.runtime.distributed import World, rank_share
from grpo.runtime.model import attach_lora, load_model_and_tokenizer
from grpo.training.update import policy_update, token_means

G, PROMPTS, MAX_TOKENS = 2, 4, 6
LENGTHS = [6, 1, 3, 5, 2, 2, 6, 4]  # completion lengths of the 8 rows: unequal within and across prompts
CLIP = ClipRange(0.2, 0.28, 3.0, 0.25, 1.0)
PAIRS = [(a, p) for a in AGGREGATIONS for p in POLICY_LOSSES if check_policy_loss(p, a) is None]


def fixed_rollout() -> RolloutBatch:
    generator = torch.Generator().manual_seed(0)
    prompt_lengths = [3, 5, 2, 4]
    width = max(prompt_lengths)
    prompt_ids = torch.zeros((PROMPTS, width), dtype=torch.long)
    prompt_mask = torch.zeros((PROMPTS, width), dtype=torch.long)
    for i, n in enumerate(prompt_lengths):  # left-padded, as the sampler's
        prompt_ids[i, width - n:] = torch.randint(3, 200, (n,), generator=generator)
        prompt_mask[i, width - n:] = 1
    mask = (torch.arange(MAX_TOKENS) < torch.tensor(LENGTHS).unsqueeze(1)).float()
    ids = torch.where(mask.bool(), torch.randint(3, 200, (len(LENGTHS), MAX_TOKENS), generator=generator), 0)
    rows = len(LENGTHS)
    return RolloutBatch(prompt_ids, prompt_mask, ids, mask, torch.zeros(rows, dtype=torch.bool), [""] * rows, G,
                        torch.zeros(rows, MAX_TOKENS), torch.zeros(rows, MAX_TOKENS))


def build_model(model_dir: str, dtype: torch.dtype):
    model, _ = load_model_and_tokenizer(model_dir)
    torch.manual_seed(0)
    model = attach_lora(model.to(dtype), 4, 8, 0.0, ("q_proj", "v_proj", "up_proj"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so both LoRA matrices get a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(dtype) * 0.1)
    return model.train()


def fixed_targets(model, batch: RolloutBatch) -> Targets:
    """Advantages, a reference and old log-probs around the model's own: the ratio exp(logp - old) spreads
    over [0.55, 1.65], out of the clip range on both sides."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        logp = frozen_logprobs(LogProbPass(model), batch, LogProbPlan(1.0, PROMPTS)).double()
    noise = (torch.rand(logp.shape, generator=generator, dtype=torch.float64) - 0.5)
    advantages = torch.tensor([1.0, -1.0, 0.7, -0.7, -1.2, 1.2, 0.3, -0.3], dtype=torch.float64)
    return Targets(batch.completion_mask, advantages, advantages, old_logp=logp - noise,
                   ref_logp=logp + 0.3 * noise.flip(1))


def rank_part(batch: RolloutBatch, targets: Targets, world: World) -> tuple[RolloutBatch, Targets]:
    share = rank_share(PROMPTS, world)
    rows = list(range(share.start * G, share.stop * G))
    return batch.select_groups(list(share)), targets.select(rows)


def rank_targets(model, world: World) -> tuple[RolloutBatch, Targets]:
    """This rank's share of the fixed rollout and its targets, in the adapter's dtype (before any sharding:
    every process computes the whole rollout's old log-probs the same way)."""
    batch = fixed_rollout()
    part, t = rank_part(batch, fixed_targets(model, batch), world)
    dtype = next(p for p in model.parameters() if p.requires_grad).dtype
    return part, Targets(t.loss_mask.to(dtype), t.advantages.to(dtype), t.rewards.to(dtype), t.old_logp.to(dtype),
                         t.ref_logp.to(dtype))


def run_pairs(backend, part: RolloutBatch, part_targets: Targets, world: World, prompts_per_micro_batch: int,
              capture) -> dict:
    """{pair: {"grads": {name: gradient}, "means": the step's logged token means}} of one optimizer step per
    pair, on this rank's share."""
    plan = LogProbPlan(1.0, prompts_per_micro_batch)
    out = {}
    for aggregation, policy in PAIRS:
        loss = LossSettings(policy, 0.04, CLIP, aggregation, MAX_TOKENS)
        objective = GrpoObjective(loss, MAX_TOKENS, TokenCredit(TokensConfig()))
        _, sums = policy_update(backend.logprobs, backend, part, part_targets, objective, loss, plan, world)
        out[f"{aggregation}/{policy}"] = {"grads": capture(), "means": token_means([sums], world)}
    return out


def single_process_gradients(model_dir: str, dtype: torch.dtype, prompts_per_micro_batch: int) -> dict:
    from grpo.backends import SingleProcess

    model = build_model(model_dir, dtype)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    optimizer = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    grads = {}
    optimizer.register_step_pre_hook(
        lambda *_: grads.update({n: p.grad.detach().clone() for n, p in zip(names, params)}))
    part, targets = rank_targets(model, World())
    backend = SingleProcess(model, None, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), 0.0,
                            World())
    return run_pairs(backend, part, targets, World(), prompts_per_micro_batch, lambda: dict(grads))


def main(model_dir: str, out: str, strategy: str) -> None:
    from grpo.runtime import distributed

    world = distributed.world_from_env()
    dtype = torch.float64 if strategy == "ddp" else torch.float32
    if strategy == "ddp":
        from grpo.backends import DataParallel

        distributed.start_process_group(world)
        model = build_model(model_dir, dtype)
        part, targets = rank_targets(model, world)
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        optimizer = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
        grads = {}
        optimizer.register_step_pre_hook(
            lambda *_: grads.update({n: p.grad.detach().clone() for n, p in zip(names, params)}))
        backend = DataParallel(model, None, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                               0.0, world)
        capture = lambda: dict(grads)  # noqa: E731
    else:
        from deepspeed.utils import safe_get_full_grad

        from grpo.backends import DeepSpeedZero3

        distributed.start(world)
        model = build_model(model_dir, dtype)
        part, targets = rank_targets(model, world)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
        ds_config = {"train_micro_batch_size_per_gpu": G, "gradient_accumulation_steps": PROMPTS // world.size,
                     "train_batch_size": PROMPTS * G, "gradient_clipping": 0.0, "zero_optimization": {"stage": 3},
                     "zero_force_ds_cpu_optimizer": False}
        backend = DeepSpeedZero3(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                                 ds_config, world)
        grads, engine_step = {}, backend.engine.step

        def step_capturing():  # DeepSpeed's gradients exist between the last backward and its step
            if backend.engine.is_gradient_accumulation_boundary():
                grads.update({n: safe_get_full_grad(p).detach().clone() for n, p in zip(backend.names, backend.params)})
            engine_step()

        backend.engine.step = step_capturing
        capture = lambda: dict(grads)  # noqa: E731
    result = run_pairs(backend, part, targets, world, 1, capture)
    if world.is_main:
        torch.save(result, out)
    distributed.finish()


if __name__ == "__main__":
    main(*sys.argv[1:4])
