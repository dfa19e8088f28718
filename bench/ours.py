"""This project's GRPO step on a benchmark workload, in its own process: `python -m bench.ours a`.

The step is train.py's: the run is built by `grpo.training.setup.build_run` from a Config made the
way a recipe is (with the workload's rows as its prompts), and each step is
`grpo.training.step.train_step`, the function train.py's loop calls. Around it only timers: the
step's own stage times, the prompt pass of generation (a forward hook), and the update split into
backward (time inside `Tensor.backward`, which includes the recomputed LM-head chunks), optimizer
(AdamW step, timed by optimizer hooks) and forward (the rest: forward passes, loss math, grad
clipping). Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import resource
import time

import torch

from bench.workloads import WORKLOADS, Shared, child_parser, load_rows
from grpo import speedups
from grpo.backends import start_world
from grpo.runtime.config import CPU_MATMUL, config_from_dict
from grpo.training.prompts import PromptSet, tokenize_prompts
from grpo.training.setup import build_run
from grpo.training.step import train_step


def bench_config(w, s: Shared, steps: int, dtype: str = "float32", cpu_matmul: str = "auto",
                 model: str = "smollm2-135m-demo"):
    return config_from_dict({
        "model": {"name": model, "dtype": dtype, "use_lora": True, "lora_r": s.lora_r,
                  "lora_alpha": s.lora_alpha, "lora_dropout": s.lora_dropout,
                  "lora_target_modules": list(s.lora_modules), "cpu_matmul": cpu_matmul},
        "data": {"task": w.task, "n_shot": w.n_shot, "prompt_style": "chat"},
        "rollout": {"group_size": w.group_size, "temperature": s.temperature, "top_p": s.top_p,
                    "max_new_tokens": w.max_new_tokens, "stop_strings": []},
        "train": {"batch_size": w.micro_batch_prompts * w.group_size,
                  "grad_accum_steps": w.num_prompts // w.micro_batch_prompts, "max_steps": steps,
                  "learning_rate": s.learning_rate, "warmup_ratio": 0.0,
                  "max_grad_norm": s.max_grad_norm, "seed": s.seed},
        "loss": {"beta": s.beta},
        "rewards": [{"name": "gsm8k_format"}, {"name": "gsm8k_correctness"}],
    })


class Timers:
    """Seconds spent in Tensor.backward and in optimizer.step, accumulated until reset."""

    def __init__(self, optimizer):
        self.backward = self.optimizer = 0.0
        self._opt_start = 0.0
        original = torch.Tensor.backward

        def timed_backward(tensor, *args, **kwargs):
            started = time.perf_counter()
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self.backward += time.perf_counter() - started

        torch.Tensor.backward = timed_backward
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "_opt_start", time.perf_counter()))
        optimizer.register_step_post_hook(
            lambda *_: setattr(self, "optimizer", self.optimizer + time.perf_counter() - self._opt_start))

    def reset(self):
        self.backward = self.optimizer = 0.0


class PrefillTimer:
    """Seconds of the model's first call after arm(): generate's prompt pass (the rest of
    generate is its decode steps)."""

    def __init__(self, model):
        self.seconds, self._armed, self._start = 0.0, False, 0.0
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def arm(self):
        self.seconds, self._armed = 0.0, True

    def _before(self, *_):
        if self._armed:
            self._start = time.perf_counter()

    def _after(self, *_):
        if self._armed:
            self.seconds, self._armed = time.perf_counter() - self._start, False


def run(workload: str, steps: int, warmup: int, dtype: str = "float32", threads: int = 2,
        cpu_matmul: str = "auto", model: str = "smollm2-135m-demo") -> dict:
    w, s = WORKLOADS[workload], Shared()
    torch.set_num_threads(threads)
    launch, cfg = start_world(bench_config(w, s, steps + warmup, dtype, cpu_matmul, model), None)
    if launch.device.type != "cpu":
        raise SystemExit(f"bench/ours.py times the CPU step; this process would train on {launch.device}")
    prompt_tokens = {}

    def workload_prompts(tokenizer):
        rows = load_rows(w, tokenizer)
        tokens = tokenize_prompts(rows, tokenizer, "chat", cfg.train.max_seq_length - cfg.rollout.max_new_tokens,
                                  "bench")
        prompt_tokens.update({row["prompt"]: len(t) for row, t in zip(rows, tokens)})
        return PromptSet(rows, tokens), PromptSet([], [])

    run_ = build_run(cfg, launch, workload_prompts)
    timers = Timers(run_.backend.optimizer)
    prefill = PrefillTimer(run_.model)

    records = []
    for step in range(1, steps + warmup + 1):
        timers.reset()
        prefill.arm()
        result = train_step(run_, step)
        batch, times, stats = result.rollout.batch, result.times, result.updates[-1]
        generate_s = result.rollout.info["time/generate_s"]
        update = times["time/update_s"]
        records.append({
            "step": step, "warmup": step <= warmup, "step_s": times["time/step_s"],
            "phases_s": {"generate": generate_s, "reward_advantage": times["time/rollout_and_reward_s"] - generate_s,
                         "ref_logprobs": times["time/frozen_logprobs_s"],
                         "update_forward_other": update - timers.backward - timers.optimizer,
                         "update_backward": timers.backward, "update_optimizer": timers.optimizer},
            "generate_prefill_s": prefill.seconds,
            "prompt_lens": [prompt_tokens[p] for p in result.rollout.prompts],
            "completion_lens": batch.completion_mask.sum(1).int().tolist(),
            "loss": stats["loss"], "kl": result.token_means["kl"], "reward_mean": result.rollout.total.mean().item(),
        })
        print(f"ours step {step}: {times['time/step_s']:.2f} s {json.dumps(records[-1]['phases_s'])}", flush=True)
    return {"side": "ours", "workload": workload, "dtype": dtype, "steps": records,
            "cpu_matmul": cpu_matmul, "onednn_plan": speedups.onednn_plan(cpu_matmul),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}


def main(argv=None):
    parser = child_parser(__doc__)
    parser.add_argument("--cpu-matmul", default="auto", choices=CPU_MATMUL,
                        help="model.cpu_matmul (grpo/speedups/onednn_linear.py)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.workload, args.steps, args.warmup, args.dtype, threads=args.threads,
                         cpu_matmul=args.cpu_matmul)))


if __name__ == "__main__":
    main()
