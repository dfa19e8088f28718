"""GRPO training: `python train.py --recipe recipes/cpu-demo.yaml [section.key=value ...]`.

Across processes: `torchrun --nproc_per_node N train.py ...` runs train.strategy (zero3:
DeepSpeed ZeRO-3, the default; ddp: the base replicated, the adapter's gradients averaged), and
`deepspeed train.py --deepspeed ds_config.json ...` runs ZeRO-3 (grpo/runtime/backends.py); each
rank rolls out its share of the step's prompts.

Setup, then one loop whose stages are named: rollout -> reward -> advantage -> frozen
log-probs -> loss and optimizer step -> log -> checkpoint. Each stage is a function of the
package (grpo/training); the math lives in grpo/algorithm. What is kept from DeepSeekMath's
GRPO: group sampling, group-relative advantages, the clipped surrogate and the k3 KL to a
frozen reference. Variants (Dr. GRPO, DAPO's clip-higher and token-mean, GSPO, GDPO, KL-Cov,
DelTA, ...) are recipe switches; the reference is the base model with the LoRA adapter disabled,
so it costs no extra memory. train.objective swaps the reward signal for a teacher's (on-policy
distillation, DistIL: grpo/training/teacher.py) in the same loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from data import BadRowError
from grpo.research.distillation import rollout_horizon
from grpo.rollout import scoring
from grpo.runtime import checkpoint, distributed
from grpo.runtime.backends import DEFAULT_DS_CONFIG, create_backend, start_world
from grpo.runtime.config import ConfigError, load_config, to_dict
from grpo.runtime.model import save_merged, trainable_parameters
from grpo.runtime.signals import StopRequest
from grpo.runtime.tracking import RunTracker, plot_rewards, require
from grpo.training import metrics, shaping
from grpo.training.evaluation import log_eval, run_eval
from grpo.training.metrics import device_memory
from grpo.training.policy import build_policy, make_optimizer, seed_everything, seed_step
from grpo.training.prompts import load_prompt_sets
from grpo.training.rollouts import collect_rollouts, prompts_per_step
from grpo.training.teacher import (
    check_feedback_rows,
    code_feedback_for,
    feedback_batch,
    feedback_notes,
    load_teacher,
    teacher_device,
    teacher_distribution,
)
from grpo.training.update import (
    NonFiniteError,
    NonFiniteGuard,
    UpdateTargets,
    frozen_logprobs,
    loss_settings,
    policy_update,
    scoring_plan,
)
from rewards.registry import RewardInfrastructureError

log = logging.getLogger("train")
STOPPED = "stopped.json"  # written when SIGTERM ended the run early (scripts/sagemaker_entry.py reads it)


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
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. loss.beta=0.0")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"log.output_dir={args.output_dir}"] if args.output_dir else [])
    launch, cfg = start_world(load_config(args.recipe, overrides), args.deepspeed)  # cfg as this world runs it
    world = launch.world
    for tracker_name in cfg.log.report_to:  # a tracker that is not installed fails now, naming its extra
        if tracker_name != "tensorboard":
            require(tracker_name)
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[{world.rank}]: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(cfg.log.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stop = StopRequest()  # SIGTERM from here on: finish the step, checkpoint, exit 0
    if world.is_main:
        (out_dir / STOPPED).unlink(missing_ok=True)
    log.info("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if world.is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ---- setup -------------------------------------------------------------------------
    t, r, lo = cfg.train, cfg.rollout, cfg.loss
    seed_everything(t.seed)
    reward_fns = scoring.build_rewards(cfg.rewards)  # unknown reward names fail here, before loading
    model, tokenizer, reference = build_policy(cfg, launch.device, adapter_in_compute_dtype=launch.strategy == "zero3")
    params = trainable_parameters(model)
    train_prompts, eval_prompts = load_prompt_sets(cfg, tokenizer)
    per_step = prompts_per_step(cfg, world)  # all ranks together
    total_steps = t.max_steps or math.ceil(t.epochs * len(train_prompts) / per_step)
    optimizer, scheduler = make_optimizer(params, t, total_steps * t.num_iterations)
    backend = create_backend(cfg, launch, model, reference, optimizer, scheduler)
    loss, plan = loss_settings(cfg), scoring_plan(cfg)
    teacher = None  # the objective's teacher (grpo/training/teacher.py)
    if t.objective == "opd":
        teacher = load_teacher(cfg, teacher_device(launch.device, world.local_rank), tokenizer)
    elif t.objective == "distil":
        check_feedback_rows(train_prompts.rows, cfg.data.task)
    log.info("%d train prompts, %d eval prompts, %d trainable parameters, %d steps", len(train_prompts),
             len(eval_prompts), sum(p.numel() for p in params), total_steps)
    log.info("global batch: %d prompts x %d = %d completions per optimizer step (%s over %d process(es): "
             "%d prompts per micro-batch x %d micro-batches each)", per_step, r.group_size, per_step * r.group_size,
             launch.strategy, world.size, t.batch_size // r.group_size, t.grad_accum_steps)

    start_step = 0
    resume_from = None if args.no_resume else (
        checkpoint.latest_checkpoint(out_dir) if args.resume == "latest" else Path(args.resume)
    )
    if resume_from is not None:
        start_step = backend.load_checkpoint(resume_from)
        log.info("resumed from %s at step %d", resume_from, start_step)
    experiment = cfg.log.experiment or (Path(args.recipe).stem if args.recipe else "grpo")
    tracker = RunTracker(out_dir, total_steps, start_step, cfg.log.report_to, enabled=world.is_main,
                         experiment=experiment, params=to_dict(cfg))

    def evaluate(step: int, tag: str) -> dict:
        result, rows = run_eval(backend, tokenizer, cfg, eval_prompts, reward_fns, world)
        if result:
            tracker.log(step, result)
            tracker.log_eval_rows(step, tag, rows)  # rank 0 writes OUTPUT/eval_rows.jsonl, one line per row
            log_eval(result, step, tag)
        return result

    summary = {"before": evaluate(0, "before") if start_step == 0 and cfg.log.eval_before else None, "after": None}
    guard = NonFiniteGuard(t.max_nonfinite_steps)

    # ---- the GRPO loop -------------------------------------------------------------------
    step_times = []
    for step in range(start_step + 1, total_steps + 1):
        started = time.perf_counter()
        seed_step(t.seed, step, world.rank)  # no RNG state crosses steps: resume is exact on any world size

        # 1-2. rollout (G completions per prompt; opd: over the step's horizon) and reward (each by name)
        horizon = rollout_horizon(cfg.distill.horizon, r.max_new_tokens, step, cfg.distill.horizon_fraction,
                                  cfg.distill.horizon_growth_steps or total_steps)
        rollout = collect_rollouts(backend, tokenizer, cfg, train_prompts, reward_fns, step, world, horizon)
        batch, total = rollout.batch, rollout.total  # this rank's prompts; (B,) totals
        generated = time.perf_counter()
        if batch.num_prompts == 0:
            continue

        # 3. advantage: group-relative (GRPO's or GDPO's); then which tokens train, with what weight
        advantages = shaping.advantages(rollout.shaped, r.group_size, cfg.variants, t.advantage_scale)  # (B,)
        loss_mask, token_weights = shaping.loss_mask_and_weights(batch, total, cfg.variants)  # (B, T)

        # 4. frozen log-probs: reference (KL), old policy (only when mu > 1), the objective's teacher
        ref_logp = None
        if lo.beta > 0:
            with backend.reference_scorer() as reference_score:
                ref_logp = frozen_logprobs(reference_score, batch, plan)
        old_logp = frozen_logprobs(backend.scorer, batch, plan) if t.num_iterations > 1 else None
        targets = UpdateTargets(advantages, old_logp, ref_logp, loss_mask, token_weights)
        if teacher is not None:  # opd: the teacher's log-probs of the student's tokens
            targets.teacher_logp = frozen_logprobs(teacher, batch, plan)
        elif t.objective == "distil":  # the policy shown each completion's feedback: its top-K distribution
            rows = [row for row in rollout.rows for _ in range(r.group_size)]
            notes = feedback_notes(rows, batch.texts, code_feedback_for(cfg))
            targets.teacher_ids, targets.teacher_probs = teacher_distribution(
                backend.scorer, feedback_batch(batch, rows, notes, cfg, tokenizer), plan, t.batch_size,
                cfg.distill.top_k)
        scored = time.perf_counter()

        # 5. loss and optimizer step, mu times on the same rollout (a non-finite one is skipped)
        updates = [policy_update(backend.scorer, backend, batch, targets, loss, plan, collect_stats=i == 0)
                   for i in range(t.num_iterations)]
        first_stats, stats = updates[0], updates[-1]
        skipped = all(u["skipped"] for u in updates)  # nothing changed in this step
        finished = time.perf_counter()

        # 6. log: rows of all ranks, per-rank scalars averaged; rank 0 writes. kl and clip_frac are
        # token means per rank, so their plain average over ranks can differ a little from one process's.
        step_time = finished - started
        step_times.append(step_time)
        rows = distributed.gather_rows({
            "matrix": rollout.scores, "total": total, "mask": batch.completion_mask, "truncated": batch.truncated,
            "entropy": batch.token_entropy, "certainty": batch.token_certainty}, world)
        scalars = distributed.weighted_mean({
            **rollout.info, **first_stats, "loss": stats["loss"], "skipped": sum(u["skipped"] for u in updates),
            "time/step_s": step_time, "time/rollout_and_reward_s": generated - started,
            "time/frozen_logprobs_s": scored - generated, "time/update_s": finished - scored,
            **device_memory()}, world)
        tracker.log(step, metrics.step_record([rf.name for rf in reward_fns], rows, scalars, r.group_size))
        if cfg.log.completions_every and step % cfg.log.completions_every == 0 and world.is_main:
            tracker.log_completions(step, metrics.completion_rows(
                rollout, advantages, [rf.name for rf in reward_fns], cfg.log.completions_per_step))

        # 7. checkpoint (none after a step that changed nothing), periodic evaluation, a stop request
        guard.record(step, skipped, checkpoint.latest_checkpoint(out_dir))
        saved = not skipped and (step % cfg.log.save_every == 0 or step == total_steps)
        if saved:
            backend.save_checkpoint(out_dir, step, cfg.log.keep_checkpoints)
        if cfg.log.eval_every and step % cfg.log.eval_every == 0 and step != total_steps:
            evaluate(step, "periodic")
        if distributed.any_rank(stop.requested, world):  # SIGTERM on any rank: all stop after this step
            return stop_after(step, saved, backend, tracker, out_dir, cfg, world, stop)

    # ---- wrap up -------------------------------------------------------------------------
    summary["after"] = evaluate(total_steps, "after")
    adapter_dir = out_dir / "final" / "adapter"
    backend.save_final_adapter(adapter_dir)
    summary.update(steps=total_steps, mean_step_s=float(np.mean(step_times)) if step_times else None)
    if world.is_main:
        tokenizer.save_pretrained(adapter_dir)
        if cfg.log.merge_final and cfg.model.use_lora:
            save_merged(model, tokenizer, out_dir / "final" / "merged")
        plot = plot_rewards(tracker.path, out_dir / "reward_curves.png")
        summary["plot"] = str(plot) if plot else None
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.finish([p for p in (plot, out_dir / "summary.json") if p], adapter_dir)
        print_summary(summary)
    stop.restore()
    distributed.finish()
    return summary


def stop_after(step, saved, backend, tracker, out_dir, cfg, world, stop) -> dict:
    """SIGTERM: a checkpoint of this step (unless just written), a note for SageMaker's entry script
    (there is no final adapter to export), and exit 0; the same command resumes from here."""
    path = checkpoint.latest_checkpoint(out_dir) if saved else backend.save_checkpoint(out_dir, step,
                                                                                       cfg.log.keep_checkpoints)
    if world.is_main:
        (out_dir / STOPPED).write_text(json.dumps({"step": step, "checkpoint": str(path), "signal": "SIGTERM"}))
        log.warning("stopped by SIGTERM after step %d; checkpoint %s; run the same command to resume", step, path)
    tracker.close()
    stop.restore()
    distributed.finish()
    return {"stopped_at": step, "checkpoint": str(path)}


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
    except (BadRowError, checkpoint.CheckpointWriteError, NonFiniteError, RewardInfrastructureError) as err:
        sys.exit(f"error: {err}")
