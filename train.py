"""GRPO training: `python train.py --recipe recipes/cpu-demo.yaml [section.key=value ...]`.

Across processes: `torchrun --nproc_per_node N train.py ...` runs train.strategy (zero3:
DeepSpeed ZeRO-3, the default; ddp: the base replicated, the adapter's gradients averaged), and
`deepspeed train.py --deepspeed ds_config.json ...` runs ZeRO-3 (grpo/backends); each rank rolls
out its share of the step's prompts.

Setup, then one loop: each step (grpo/training/step.py) is rollout -> reward -> advantage ->
frozen log-probs -> loss and optimizer step; then log, checkpoint, and stop if asked. The math lives
in grpo/algorithm, the objectives (GRPO, on-policy distillation, DistIL) in grpo/objectives. What is
kept from DeepSeekMath's GRPO: group sampling, group-relative advantages, the clipped surrogate and
the k3 KL to a frozen reference. Variants are recipe switches; the reference is the base model
with the LoRA adapter disabled, so it costs no extra memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from data import BadRowError
from grpo.backends import DEFAULT_DS_CONFIG, start_world
from grpo.runtime import checkpoint, distributed
from grpo.runtime.config import ConfigError, load_config, to_dict
from grpo.runtime.model import save_merged
from grpo.runtime.signals import StopRequest
from grpo.runtime.tracking import RunTracker, jsonable, plot_rewards, require
from grpo.training.evaluation import log_eval, run_eval
from grpo.training.setup import build_run
from grpo.training.step import StepAbandoned, completion_log, step_record, train_step
from grpo.training.update import NonFiniteError, NonFiniteGuard
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
    world, out_dir = launch.world, Path(cfg.log.output_dir)
    for tracker_name in set(cfg.log.report_to) - {"tensorboard"}:  # not installed: fail now, naming its extra
        require(tracker_name)
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[{world.rank}]: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    stop = StopRequest()  # SIGTERM from here on: end the step (or abandon it), checkpoint, exit 0
    log.info("resolved config:\n%s", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if world.is_main:
        (out_dir / STOPPED).unlink(missing_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    # ---- setup -------------------------------------------------------------------------
    run = build_run(cfg, launch)
    backend, total_steps = run.backend, run.total_steps
    resume_from = None if args.no_resume else (
        checkpoint.latest_checkpoint(out_dir) if args.resume == "latest" else Path(args.resume))
    start_step = backend.load_checkpoint(resume_from) if resume_from is not None else 0
    if resume_from is not None:
        run.load_extra_state(checkpoint.read_state(resume_from))
        log.info("resumed from %s at step %d", resume_from, start_step)
    tracker = RunTracker(out_dir, total_steps, start_step, cfg.log.report_to, enabled=world.is_main,
                         experiment=cfg.log.experiment or (Path(args.recipe).stem if args.recipe else "grpo"),
                         params=to_dict(cfg))

    def evaluate(step: int, tag: str) -> dict:
        result, rows = run_eval(backend, run.tokenizer, cfg, run.eval_prompts, run.rewards, world, run.agents)
        if result:
            tracker.log(step, result)
            tracker.log_eval_rows(step, tag, rows)  # rank 0 writes OUTPUT/eval_rows.jsonl, one line per row
            log_eval(result, step, tag)
        return result

    summary = {"before": evaluate(0, "before") if start_step == 0 and cfg.log.eval_before else None, "after": None}
    guard, step_times = NonFiniteGuard(cfg.train.max_nonfinite_steps), []

    # ---- the loop: 1-5. one step (grpo/training/step.py), 6. log, 7. checkpoint, evaluate, stop if asked
    for step in range(start_step + 1, total_steps + 1):
        try:
            result = train_step(run, step, stop=lambda: stop.requested)
        except StepAbandoned:  # SIGTERM before the step's first optimizer step: it never happened
            return stop_after(step - 1, backend, tracker, out_dir, cfg, world, stop, run.extra_state())
        if result is None:
            continue
        step_times.append(result.times["time/step_s"])
        tracker.log(step, step_record(run, result))
        if cfg.log.completions_every and step % cfg.log.completions_every == 0 and world.is_main:
            tracker.log_completions(step, completion_log(run, result))
        guard.record(step, result.skipped, checkpoint.latest_checkpoint(out_dir))
        if not result.skipped and (step % cfg.log.save_every == 0 or step == total_steps):
            backend.save_checkpoint(out_dir, step, cfg.log.keep_checkpoints, run.extra_state())
        if cfg.log.eval_every and step % cfg.log.eval_every == 0 and step != total_steps:
            evaluate(step, "periodic")
        if distributed.any_rank(stop.requested, world):  # SIGTERM on any rank: all stop after this step
            return stop_after(step, backend, tracker, out_dir, cfg, world, stop, run.extra_state())

    # ---- wrap up -------------------------------------------------------------------------
    summary["after"] = evaluate(total_steps, "after")
    summary.update(steps=total_steps, mean_step_s=float(np.mean(step_times)) if step_times else None)
    finish(run, tracker, summary, out_dir)
    stop.restore()
    distributed.finish()
    return summary


def finish(run, tracker, summary: dict, out_dir: Path) -> None:
    """The final adapter (every rank takes part), then rank 0's exports: tokenizer, merged model, plot,
    summary, the trackers' artifacts."""
    adapter_dir = out_dir / "final" / "adapter"
    run.backend.save_final_adapter(adapter_dir)
    if not run.world.is_main:
        return
    run.tokenizer.save_pretrained(adapter_dir)
    if run.cfg.log.merge_final and run.cfg.model.use_lora:
        save_merged(run.model, run.tokenizer, out_dir / "final" / "merged")
    plot = plot_rewards(tracker.path, out_dir / "reward_curves.png")
    summary["plot"] = str(plot) if plot else None
    (out_dir / "summary.json").write_text(json.dumps(
        {k: {n: jsonable(v) for n, v in part.items()} if isinstance(part, dict) else jsonable(part)
         for k, part in summary.items()}, indent=2))
    tracker.finish([p for p in (plot, out_dir / "summary.json") if p], adapter_dir)
    print_summary(summary)


def stop_after(step, backend, tracker, out_dir, cfg, world, stop, extra: dict) -> dict:
    """SIGTERM: a checkpoint of `step`, the last completed one (unless one was written; none before the
    first), a note for SageMaker's entry script (there is no final adapter to export), and exit 0; the
    same command resumes from here."""
    def saved_path():
        found = dict(checkpoint.list_checkpoints(out_dir))
        return str(found[step]) if step in found else None

    path = distributed.from_rank_zero(saved_path, world)  # rank 0's disk holds the checkpoints
    if path is None and step > 0:
        path = str(backend.save_checkpoint(out_dir, step, cfg.log.keep_checkpoints, extra))
    if world.is_main:
        (out_dir / STOPPED).write_text(json.dumps({"step": step, "checkpoint": path, "signal": "SIGTERM"}))
        log.warning("stopped by SIGTERM after step %d; checkpoint %s; run the same command to resume", step, path)
    tracker.close()
    stop.restore()
    distributed.finish()
    return {"stopped_at": step, "checkpoint": path}


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
