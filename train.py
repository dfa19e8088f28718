"""GRPO training: `python train.py --recipe recipes/cpu-demo.yaml [section.key=value ...]`.

Across processes: `torchrun --nproc_per_node N train.py ...` or `deepspeed train.py --deepspeed
ds_config.json ...` runs DeepSpeed ZeRO-3 (grpo/distributed.py); each rank rolls out its share
of the step's prompts.

Setup, then one loop whose stages are named: rollout -> reward -> advantage -> frozen
log-probs -> loss and optimizer step -> log -> checkpoint. The math lives in grpo/loss.py;
this file only wires it. What is kept from DeepSeekMath's GRPO: group sampling, group-relative
advantages, the clipped surrogate and the k3 KL to a frozen reference. Variants (Dr. GRPO,
DAPO's clip-higher and token-mean) are recipe switches; the reference is the base model with
the LoRA adapter disabled, so it costs no extra memory.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import data
from grpo import checkpoint, distributed, metrics, scoring, shaping
from grpo.config import Config, ConfigError, load_config, to_dict
from grpo.distributed import World
from grpo.evaluation import evaluate_rows
from grpo.loss import group_advantages
from grpo.onednn_linear import onednn_plan, use_onednn_linears
from grpo.model import (attach_lora, load_model_and_tokenizer, lora_folded_for_sampling, resolve_source,
                        save_merged, trainable_parameters)
from grpo.rollout import CompletionScorer, SamplingParams, concat_batches, generate
from grpo.tracking import RunTracker, plot_rewards
from grpo.update import (DeepSpeedOptimizerStep, LocalOptimizerStep, LossSettings, frozen_logprobs,
                         policy_update)
from grpo.variants import groups_with_signal

log = logging.getLogger("train")
DEFAULT_DS_CONFIG = Path(__file__).resolve().parent / "ds_config.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", help="YAML recipe (see recipes/); omitted = built-in defaults")
    parser.add_argument("--output-dir", help="overrides log.output_dir")
    parser.add_argument("--resume", nargs="?", const="latest", default="latest",
                        help="checkpoint folder to resume from; by default the newest one in the "
                             "output dir, if any")
    parser.add_argument("--no-resume", action="store_true",
                        help="start fresh even if the output dir holds checkpoints (they are kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--deepspeed", metavar="DS_CONFIG",
                        help="DeepSpeed ZeRO-3 config; the default under torchrun with more than one "
                             f"process is {DEFAULT_DS_CONFIG.name}")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # read from env
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.beta=0.0")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_policy(cfg: Config, device: torch.device | None):
    """The trainable policy, its tokenizer, and a frozen reference copy only when one is needed.

    device None leaves the weights on the CPU for DeepSpeed, which moves each rank's shard.
    """
    m = cfg.model
    model, tokenizer = load_model_and_tokenizer(
        m.name, gguf_file=m.gguf_file, dtype=m.dtype, load_in_4bit=m.load_in_4bit, device=device
    )
    reference = None
    if m.use_lora:
        model = attach_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
    elif cfg.train.beta > 0:  # full fine-tuning: the reference must be a separate frozen copy
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    plan = onednn_plan(m.cpu_matmul)
    if plan and device is not None and device.type == "cpu":
        use_onednn_linears(model, plan)  # float32 products on oneDNN (grpo/onednn_linear.py)
        if reference is not None:
            use_onednn_linears(reference, plan)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer, reference


def load_rows(cfg: Config, tokenizer) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    splits = data.load_task(
        d.task, n_shot=d.n_shot, style=d.prompt_style, tokenizer=tokenizer,
        train_file=d.train_file, validation_file=d.validation_file, test_file=d.test_file,
        val_fraction=d.val_fraction, seed=cfg.train.seed, limit_train=d.limit_train,
        limit_eval=d.limit_eval, on_bad_row=d.on_bad_row, difficulty=d.difficulty,
        num_synthetic=d.num_synthetic,
    )
    if not splits["train"]:
        raise ConfigError(f"data.task={d.task!r} produced no training rows; check data.train_file")
    return splits["train"], splits.get(d.eval_split) or []


def tokenize_prompts(rows: list[dict], tokenizer, style: str, max_prompt_tokens: int, split: str):
    """Token ids of each row's prompt; a prompt that leaves no room for the completion is an error."""
    add_special = style == "plain"  # chat templates already carry their special tokens
    ids = [tokenizer(r["prompt"], add_special_tokens=add_special)["input_ids"] for r in rows]
    too_long = [i for i, t in enumerate(ids) if len(t) > max_prompt_tokens]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} {split} prompt(s) exceed {max_prompt_tokens} tokens (row {too_long[0]} "
            f"has {len(ids[too_long[0]])}); raise train.max_seq_length or lower data.n_shot / "
            "rollout.max_new_tokens"
        )
    return ids


def prompt_indices(num_rows: int, step: int, per_step: int, seed: int) -> list[int]:
    """Rows for rollout `step` (1-based): consecutive positions of a per-epoch shuffled order.

    Stateless, so resuming at step k draws exactly the prompts an uninterrupted run would.
    """
    out = []
    for position in range((step - 1) * per_step, step * per_step):
        epoch, offset = divmod(position, num_rows)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


def sampling_seed(seed: int, step: int, position: int) -> int:
    """The sampling seed of the prompt at `position` in step `step`'s list: the same on any rank."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


def rank_prompts(num_rows: int, step: int, per_step: int, seed: int, world: World):
    """This rank's share of the step's `per_step` prompts, as (row indices, sampling seeds)."""
    indices = prompt_indices(num_rows, step, per_step, seed)
    positions = distributed.rank_share(per_step, world)
    return [indices[p] for p in positions], [sampling_seed(seed, step, p) for p in positions]


@contextlib.contextmanager
def generation_mode(model, engine):
    """Eval mode while decoding (under gradient checkpointing HF turns the KV cache off in train
    mode) and, under ZeRO-3, the sharded weights gathered once for the whole decode; in one
    process, float32 LoRA adapters folded into their weights (grpo/model.py)."""
    model.eval()
    try:
        if engine is not None:
            with distributed.full_weights_for_generation(engine):
                yield
        else:
            with lora_folded_for_sampling(model):
                yield
    finally:
        model.train()


def collect_rollouts(model, engine, tokenizer, cfg: Config, train_rows, train_tokens, reward_fns, weights,
                     sampling: SamplingParams, step: int, per_step: int, world: World):
    """This rank's rollout and reward for one step: (batch, (B, K) scores, (B,) totals, info).

    `per_step` counts the prompts of all ranks. With DAPO dynamic sampling (one process only),
    groups whose totals are all equal are dropped and further prompts drawn (each try from its
    own seeded order, so resuming stays exact) until `per_step` groups carry signal or the tries
    run out; a short batch then trains as it is.
    """
    v, g = cfg.variants, cfg.rollout.group_size
    kept, needed, tries = [], per_step, 1 + (v.dynamic_sampling_max_tries if v.dynamic_sampling else 0)
    for attempt in range(tries):
        indices, seeds = rank_prompts(len(train_rows), step, per_step, cfg.train.seed + attempt * 7_919, world)
        rows = [train_rows[i] for i in indices]
        with generation_mode(model, engine):
            batch = generate(model, tokenizer, [train_tokens[i] for i in indices], g, sampling, seeds)
        matrix = scoring.score(reward_fns, batch.texts, scoring.expand_columns(rows, g))  # (B, K)
        if not v.dynamic_sampling:
            total, info = shaping.shape_rewards(matrix, weights, batch, v, cfg.rollout.max_new_tokens)
            return batch, matrix, total, info
        total, _ = shaping.shape_rewards(matrix, weights, batch, v, cfg.rollout.max_new_tokens)
        groups = groups_with_signal(total, g).nonzero().squeeze(1).tolist()[:needed]
        rows_kept = [i * g + j for i in groups for j in range(g)]
        kept.append((batch.select_groups(groups), matrix[rows_kept]))
        needed -= len(groups)
        if needed == 0:
            break
    batch = concat_batches([b for b, _ in kept], tokenizer.pad_token_id)
    matrix = torch.cat([m for _, m in kept])
    if batch.num_prompts == 0:  # nothing had signal: train on nothing rather than crash
        log.warning("step %d: no group with reward spread after %d tries", step, tries)
    total, info = shaping.shape_rewards(matrix, weights, batch, v, cfg.rollout.max_new_tokens)
    info.update({"dynamic_sampling/tries": attempt + 1, "dynamic_sampling/groups": batch.num_prompts})
    return batch, matrix, total, info


def make_optimizer(params, t, total_updates: int):
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    warmup = int(math.ceil(t.warmup_ratio * total_updates))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_updates)


def loss_settings(cfg: Config) -> LossSettings:
    """The update's settings from the recipe (also used by bench/ours.py, so both run the same step)."""
    t, r = cfg.train, cfg.rollout
    return LossSettings(
        beta=t.beta, eps_low=t.eps_low, eps_high=t.eps_high, aggregation=t.loss_aggregation,
        max_tokens=r.max_new_tokens, temperature=r.temperature,
        prompts_per_micro_batch=t.batch_size // r.group_size,
        shared_prefix=not cfg.model.gradient_checkpointing,  # HF drops the KV cache under checkpointing
        policy_loss=cfg.variants.policy_loss, dual_clip_c=cfg.variants.dual_clip_c,
    )


def run_eval(cfg, model, engine, tokenizer, eval_rows, eval_tokens, reward_fns, step, tracker, tag,
             world: World):
    """Greedy held-out evaluation; each rank decodes its share of the rows, the means are combined."""
    if not eval_rows:
        return {}
    started = time.perf_counter()
    share = distributed.rank_share(len(eval_rows), world)
    with generation_mode(model, engine):
        result, _ = evaluate_rows(
            model, tokenizer, [eval_rows[i] for i in share], [eval_tokens[i] for i in share], reward_fns,
            cfg.log.eval_max_new_tokens or cfg.rollout.max_new_tokens, tuple(cfg.rollout.stop_strings),
            cfg.log.eval_batch_size, cfg.log.accuracy_reward,
        )
    result = {**distributed.weighted_mean(result, world, weight=len(share)), "eval/num_rows": len(eval_rows)}
    result["eval/time_s"] = time.perf_counter() - started
    tracker.log(step, result)
    log.info("eval (%s, step %d): %s", tag, step, json.dumps({k: round(v, 4) for k, v in result.items()}))
    return result


def setup_world(args, cfg: Config) -> tuple[World, torch.device | None, Path | None]:
    """Ranks, this rank's device (None: DeepSpeed places the shards) and the DeepSpeed config, if any.

    DeepSpeed runs when --deepspeed is given or more than one process was launched.
    """
    world = distributed.world_from_env()
    ds_path = Path(args.deepspeed) if args.deepspeed else (DEFAULT_DS_CONFIG if world.size > 1 else None)
    if ds_path is None:
        return world, torch.device("cuda" if torch.cuda.is_available() else "cpu"), None
    distributed.check_recipe(cfg)
    distributed.start(world)
    if world.is_main:  # fetch (and convert) the demo model once, before the other ranks load it
        resolve_source(cfg.model.name, cfg.model.gguf_file)
    distributed.barrier(world)
    return world, None, ds_path


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"log.output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.recipe, overrides)
    world, device, ds_path = setup_world(args, cfg)
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[{world.rank}]: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(cfg.log.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if world.is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ---- setup -------------------------------------------------------------------------
    t, r = cfg.train, cfg.rollout
    seed_everything(t.seed)
    reward_fns = scoring.build_rewards(cfg.rewards)  # unknown reward names fail here, before loading
    weights = torch.tensor([rf.weight for rf in reward_fns])
    model, tokenizer, reference = build_policy(cfg, device)
    params = trainable_parameters(model)
    train_rows, eval_rows = load_rows(cfg, tokenizer)
    max_prompt = t.max_seq_length - r.max_new_tokens
    train_tokens = tokenize_prompts(train_rows, tokenizer, cfg.data.prompt_style, max_prompt, "train")
    eval_tokens = tokenize_prompts(eval_rows, tokenizer, cfg.data.prompt_style, max_prompt, "eval")
    prompts_per_micro = t.batch_size // r.group_size
    prompts_per_step = prompts_per_micro * t.grad_accum_steps * world.size  # all ranks together
    total_steps = t.max_steps or math.ceil(t.epochs * len(train_rows) / prompts_per_step)
    optimizer, scheduler = make_optimizer(params, t, total_steps * t.num_iterations)
    score, engine = CompletionScorer(model), None  # score(batch, temperature, shared_prefix) -> (B, T)
    if ds_path is not None:
        ds_config = distributed.load_ds_config(ds_path, cfg, world.size, model.config.hidden_size)
        score = engine = distributed.deepspeed_engine(score, optimizer, ds_config)
        log.info("ZeRO-3 over %d ranks (%s); rank 0 holds %s", world.size, ds_path,
                 distributed.shard_sizes(model))
    reference_score = None if reference is None else CompletionScorer(reference.to(next(score.parameters()).device))
    sampling = SamplingParams(r.temperature, r.top_p, r.max_new_tokens, tuple(r.stop_strings))
    settings = loss_settings(cfg)
    log.info("%d train prompts, %d eval prompts, %d trainable parameters, %d steps of %d prompts x %d",
             len(train_rows), len(eval_rows), sum(p.numel() for p in params), total_steps,
             prompts_per_step, r.group_size)

    start_step = 0
    resume_from = None if args.no_resume else (
        checkpoint.latest_checkpoint(out_dir) if args.resume == "latest" else Path(args.resume)
    )
    if resume_from is not None:
        state = (checkpoint.load_checkpoint(resume_from, model, optimizer, scheduler) if engine is None
                 else checkpoint.load_sharded_checkpoint(resume_from, engine, scheduler, world))
        start_step = state["step"]
        log.info("resumed from %s at step %d", resume_from, start_step)
    optimizer_step = (LocalOptimizerStep(optimizer, scheduler, params, t.max_grad_norm) if engine is None
                      else DeepSpeedOptimizerStep(engine, scheduler))
    tracker = RunTracker(out_dir, total_steps, start_step, cfg.log.tensorboard, enabled=world.is_main)
    summary = {"before": None, "after": None}
    evaluate = lambda step, tag: run_eval(  # noqa: E731
        cfg, model, engine, tokenizer, eval_rows, eval_tokens, reward_fns, step, tracker, tag, world)
    if start_step == 0:
        summary["before"] = evaluate(0, "before")

    # ---- the GRPO loop -------------------------------------------------------------------
    step_times = []
    for step in range(start_step + 1, total_steps + 1):
        started = time.perf_counter()

        # 1-2. rollout (G completions per prompt) and reward (each reward by name, then the total)
        batch, matrix, total, reward_info = collect_rollouts(
            model, engine, tokenizer, cfg, train_rows, train_tokens, reward_fns, weights, sampling, step,
            prompts_per_step, world)  # (B, K) scores, (B,) totals: this rank's prompts
        generated = time.perf_counter()
        if batch.num_prompts == 0:
            continue

        # 3. advantage: group-relative; then which tokens train, with what weight
        advantages = group_advantages(total, r.group_size, t.advantage_scale)  # (B,)
        loss_mask, token_weights = shaping.loss_mask_and_weights(batch, total, cfg.variants)  # (B, T)

        # 4. frozen log-probs: reference (KL) and old policy (only when mu > 1)
        ref_logp = None
        if t.beta > 0 and reference_score is not None:  # full fine-tuning: the frozen copy
            ref_logp = frozen_logprobs(reference_score, batch, settings)
        elif t.beta > 0:  # LoRA: the same (sharded) weights with the adapter off
            with model.disable_adapter():
                ref_logp = frozen_logprobs(score, batch, settings)
        old_logp = frozen_logprobs(score, batch, settings) if t.num_iterations > 1 else None
        scored = time.perf_counter()

        # 5. loss and optimizer step, mu times on the same rollout
        for iteration in range(t.num_iterations):
            stats = policy_update(score, optimizer_step, batch, advantages, old_logp, ref_logp,
                                  loss_mask, token_weights, settings, collect_stats=iteration == 0)
            if iteration == 0:
                first_stats = stats
        finished = time.perf_counter()

        # 6. log: rows of all ranks, per-rank scalars averaged; rank 0 writes. kl and clip_frac are
        # token means per rank, so their plain average over ranks can differ a little from one process's.
        step_time = finished - started
        step_times.append(step_time)
        rows = distributed.gather_rows({
            "matrix": matrix, "total": total, "mask": batch.completion_mask, "truncated": batch.truncated,
            "entropy": batch.token_entropy, "certainty": batch.token_certainty}, world)
        scalars = distributed.weighted_mean({
            **reward_info, **first_stats, "loss": stats["loss"],
            "time/step_s": step_time, "time/rollout_and_reward_s": generated - started,
            "time/frozen_logprobs_s": scored - generated, "time/update_s": finished - scored}, world)
        record = {
            **metrics.reward_metrics([rf.name for rf in reward_fns], rows["matrix"], rows["total"], r.group_size),
            **metrics.completion_metrics(rows["mask"], rows["truncated"]),
            **scalars,
            "entropy": metrics.masked_mean(rows["entropy"], rows["mask"]),
            "self_certainty": metrics.masked_mean(rows["certainty"], rows["mask"]),
            "tokens_per_s": rows["mask"].sum().item() / scalars["time/step_s"],
        }
        tracker.log(step, record)

        # 7. checkpoint (and periodic held-out evaluation)
        if step % cfg.log.save_every == 0 or step == total_steps:
            if engine is None:
                checkpoint.save_checkpoint(out_dir, step, model, optimizer, scheduler, cfg.log.keep_checkpoints)
            else:
                checkpoint.save_sharded_checkpoint(out_dir, step, engine, model, scheduler, world,
                                                   cfg.log.keep_checkpoints)
        if cfg.log.eval_every and step % cfg.log.eval_every == 0 and step != total_steps:
            evaluate(step, "periodic")

    # ---- wrap up -------------------------------------------------------------------------
    summary["after"] = evaluate(total_steps, "after")
    tracker.close()
    adapter_dir = out_dir / "final" / "adapter"
    if engine is None:
        checkpoint.save_weights(model, adapter_dir)
    else:
        checkpoint.save_gathered_weights(model, adapter_dir, world)
    summary.update(steps=total_steps, mean_step_s=float(np.mean(step_times)) if step_times else None)
    if world.is_main:
        tokenizer.save_pretrained(adapter_dir)
        if cfg.log.merge_final and cfg.model.use_lora:
            save_merged(model, tokenizer, out_dir / "final" / "merged")
        plot = plot_rewards(tracker.path, out_dir / "reward_curves.png")
        summary["plot"] = str(plot) if plot else None
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    distributed.finish()
    return summary


def print_summary(summary: dict) -> None:
    before, after = summary.get("before") or {}, summary.get("after") or {}
    print("\nheld-out (greedy)    before     after")
    for key in ("eval/accuracy", "eval/reward_mean"):
        if key in after:
            b = f"{before[key]:.3f}" if key in before else "   -  "
            print(f"{key.removeprefix('eval/'):<18} {b:>8}  {after[key]:>8.3f}")
    if summary.get("mean_step_s"):
        print(f"mean step time: {summary['mean_step_s']:.2f} s over {summary['steps']} steps")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"config error: {err}")
