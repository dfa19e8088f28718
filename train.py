"""GRPO training: `python train.py --recipe recipes/cpu-demo.yaml [section.key=value ...]`.

Setup, then one loop whose stages are named: rollout -> reward -> advantage -> frozen
log-probs -> loss and optimizer step -> log -> checkpoint. The math lives in grpo/loss.py;
this file only wires it. What is kept from DeepSeekMath's GRPO: group sampling, group-relative
advantages, the clipped surrogate and the k3 KL to a frozen reference. Variants (Dr. GRPO,
DAPO's clip-higher and token-mean) are recipe switches; the reference is the base model with
the LoRA adapter disabled, so it costs no extra memory.
"""

from __future__ import annotations

import argparse
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
from grpo import checkpoint, metrics, scoring, shaping
from grpo.config import Config, ConfigError, load_config, to_dict
from grpo.evaluation import evaluate_rows
from grpo.loss import group_advantages
from grpo.model import attach_lora, load_model_and_tokenizer, save_merged, trainable_parameters
from grpo.rollout import SamplingParams, concat_batches, generate
from grpo.tracking import RunTracker, plot_rewards
from grpo.update import LossSettings, frozen_logprobs, policy_update
from grpo.variants import groups_with_signal

log = logging.getLogger("train")


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
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.beta=0.0")
    return parser.parse_args(argv)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_policy(cfg: Config):
    """The trainable policy, its tokenizer, and a frozen reference copy only when one is needed."""
    m = cfg.model
    model, tokenizer = load_model_and_tokenizer(
        m.name, gguf_file=m.gguf_file, dtype=m.dtype, load_in_4bit=m.load_in_4bit
    )
    reference = None
    if m.use_lora:
        model = attach_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
    elif cfg.train.beta > 0:  # full fine-tuning: the reference must be a separate frozen copy
        reference = copy.deepcopy(model).eval().requires_grad_(False)
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


def collect_rollouts(model, tokenizer, cfg: Config, train_rows, train_tokens, reward_fns, weights,
                     sampling: SamplingParams, step: int, per_step: int, generator):
    """Rollout and reward for one step: (batch, (B, K) scores, (B,) totals, info).

    With DAPO dynamic sampling, groups whose totals are all equal are dropped and further
    prompts drawn (each try from its own seeded order, so resuming stays exact) until
    `per_step` groups carry signal or the tries run out; a short batch then trains as it is.
    """
    v, g = cfg.variants, cfg.rollout.group_size
    kept, needed, tries = [], per_step, 1 + (v.dynamic_sampling_max_tries if v.dynamic_sampling else 0)
    for attempt in range(tries):
        indices = prompt_indices(len(train_rows), step, per_step, cfg.train.seed + attempt * 7_919)
        rows = [train_rows[i] for i in indices]
        batch = generate(model, tokenizer, [train_tokens[i] for i in indices], g, sampling, generator)
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
        prompts_per_micro_batch=t.batch_size // r.group_size, max_grad_norm=t.max_grad_norm,
        shared_prefix=not cfg.model.gradient_checkpointing,  # HF drops the KV cache under checkpointing
        policy_loss=cfg.variants.policy_loss, dual_clip_c=cfg.variants.dual_clip_c,
    )


def run_eval(cfg, model, tokenizer, eval_rows, eval_tokens, reward_fns, step, tracker, tag):
    if not eval_rows:
        return {}
    started = time.perf_counter()
    result, _ = evaluate_rows(
        model, tokenizer, eval_rows, eval_tokens, reward_fns,
        cfg.log.eval_max_new_tokens or cfg.rollout.max_new_tokens, tuple(cfg.rollout.stop_strings),
        cfg.log.eval_batch_size, cfg.log.accuracy_reward,
    )
    result["eval/time_s"] = time.perf_counter() - started
    tracker.log(step, result)
    log.info("eval (%s, step %d): %s", tag, step, json.dumps({k: round(v, 4) for k, v in result.items()}))
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"log.output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.recipe, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(cfg.log.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ---- setup -------------------------------------------------------------------------
    t, r = cfg.train, cfg.rollout
    generator = seed_everything(t.seed)
    reward_fns = scoring.build_rewards(cfg.rewards)  # unknown reward names fail here, before loading
    weights = torch.tensor([rf.weight for rf in reward_fns])
    model, tokenizer, reference = build_policy(cfg)
    params = trainable_parameters(model)
    train_rows, eval_rows = load_rows(cfg, tokenizer)
    max_prompt = t.max_seq_length - r.max_new_tokens
    train_tokens = tokenize_prompts(train_rows, tokenizer, cfg.data.prompt_style, max_prompt, "train")
    eval_tokens = tokenize_prompts(eval_rows, tokenizer, cfg.data.prompt_style, max_prompt, "eval")
    prompts_per_micro = t.batch_size // r.group_size
    prompts_per_step = prompts_per_micro * t.grad_accum_steps
    total_steps = t.max_steps or math.ceil(t.epochs * len(train_rows) / prompts_per_step)
    optimizer, scheduler = make_optimizer(params, t, total_steps * t.num_iterations)
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
        start_step = checkpoint.load_checkpoint(resume_from, model, optimizer, scheduler, generator)["step"]
        log.info("resumed from %s at step %d", resume_from, start_step)
    tracker = RunTracker(out_dir, total_steps, start_step, cfg.log.tensorboard)
    summary = {"before": None, "after": None}
    if start_step == 0:
        summary["before"] = run_eval(cfg, model, tokenizer, eval_rows, eval_tokens, reward_fns, 0, tracker, "before")

    # ---- the GRPO loop -------------------------------------------------------------------
    step_times = []
    for step in range(start_step + 1, total_steps + 1):
        started = time.perf_counter()

        # 1-2. rollout (G completions per prompt) and reward (each reward by name, then the total)
        batch, matrix, total, reward_info = collect_rollouts(
            model, tokenizer, cfg, train_rows, train_tokens, reward_fns, weights, sampling, step,
            prompts_per_step, generator)  # (B, K) scores, (B,) totals
        generated = time.perf_counter()
        if batch.num_prompts == 0:
            continue

        # 3. advantage: group-relative; then which tokens train, with what weight
        advantages = group_advantages(total, r.group_size, t.advantage_scale)  # (B,)
        loss_mask, token_weights = shaping.loss_mask_and_weights(batch, total, cfg.variants)  # (B, T)

        # 4. frozen log-probs: reference (KL) and old policy (only when mu > 1)
        ref_logp = None
        if t.beta > 0:
            ref_logp = frozen_logprobs(model, batch, settings, reference, disable_adapter=cfg.model.use_lora)
        old_logp = frozen_logprobs(model, batch, settings) if t.num_iterations > 1 else None
        scored = time.perf_counter()

        # 5. loss and optimizer step, mu times on the same rollout
        for iteration in range(t.num_iterations):
            stats = policy_update(model, optimizer, scheduler, batch, advantages, old_logp, ref_logp,
                                  loss_mask, token_weights, settings, params, collect_stats=iteration == 0)
            if iteration == 0:
                first_stats = stats
        finished = time.perf_counter()

        # 6. log
        step_time = finished - started
        step_times.append(step_time)
        tokens = batch.completion_mask.sum().item()
        record = {
            **metrics.reward_metrics([rf.name for rf in reward_fns], matrix, total, r.group_size),
            **metrics.completion_metrics(batch.completion_mask, batch.truncated),
            **reward_info, **first_stats, "loss": stats["loss"],
            "entropy": metrics.masked_mean(batch.token_entropy, batch.completion_mask),
            "self_certainty": metrics.masked_mean(batch.token_certainty, batch.completion_mask),
            "time/step_s": step_time, "time/rollout_and_reward_s": generated - started,
            "time/frozen_logprobs_s": scored - generated, "time/update_s": finished - scored,
            "tokens_per_s": tokens / step_time,
        }
        tracker.log(step, record)

        # 7. checkpoint (and periodic held-out evaluation)
        if step % cfg.log.save_every == 0 or step == total_steps:
            checkpoint.save_checkpoint(out_dir, step, model, optimizer, scheduler, generator,
                                       cfg.log.keep_checkpoints)
        if cfg.log.eval_every and step % cfg.log.eval_every == 0 and step != total_steps:
            run_eval(cfg, model, tokenizer, eval_rows, eval_tokens, reward_fns, step, tracker, "periodic")

    # ---- wrap up -------------------------------------------------------------------------
    summary["after"] = run_eval(cfg, model, tokenizer, eval_rows, eval_tokens, reward_fns,
                                total_steps, tracker, "after")
    tracker.close()
    final_dir = out_dir / "final"
    checkpoint.save_weights(model, final_dir / "adapter")
    tokenizer.save_pretrained(final_dir / "adapter")
    if cfg.log.merge_final and cfg.model.use_lora:
        save_merged(model, tokenizer, final_dir / "merged")
    plot = plot_rewards(tracker.path, out_dir / "reward_curves.png")
    summary.update(steps=total_steps, mean_step_s=float(np.mean(step_times)) if step_times else None,
                   plot=str(plot) if plot else None)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
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
