"""This project's GRPO step on a benchmark workload, in its own process: `python -m bench.ours a`.

The step is train.py's loop body, stage by stage, with the same package functions (generate,
the reward scoring, the advantages, frozen_logprobs, policy_update, the one-process backend)
and a Config built the way a recipe is. Around them only timers: the update is split into backward (time inside
`Tensor.backward`, which includes the recomputed LM-head chunks), optimizer (AdamW step,
timed by optimizer hooks) and forward (the rest: forward passes, loss math, grad clipping).
Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import resource
import time

import torch

from bench.workloads import WORKLOADS, Shared, child_parser, load_rows
from grpo.rollout import generate, scoring
from grpo.runtime.backends import SingleProcess
from grpo.runtime.config import CPU_MATMUL, config_from_dict
from grpo.runtime.distributed import World
from grpo.runtime.model import resolve_for_device, trainable_parameters
from grpo.speedups.onednn_linear import onednn_plan
from grpo.training import shaping
from grpo.training.policy import build_policy, make_optimizer, seed_everything
from grpo.training.prompts import prompt_indices, sampling_seed, tokenize_prompts
from grpo.training.rollouts import reward_weights, sampling_params
from grpo.training.update import UpdateTargets, frozen_logprobs, loss_settings, policy_update, scoring_plan


def bench_config(w, s: Shared, steps: int, dtype: str = "float32", cpu_matmul: str = "auto"):
    return config_from_dict({
        "model": {"name": "smollm2-135m-demo", "dtype": dtype, "use_lora": True, "lora_r": s.lora_r,
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
        cpu_matmul: str = "auto") -> dict:
    w, s = WORKLOADS[workload], Shared()
    torch.set_num_threads(threads)
    cfg = resolve_for_device(bench_config(w, s, steps + warmup, dtype, cpu_matmul), cuda=False)
    t, r = cfg.train, cfg.rollout
    seed_everything(t.seed)
    reward_fns = scoring.build_rewards(cfg.rewards)
    weights = reward_weights(reward_fns)
    model, tokenizer, _ = build_policy(cfg, torch.device("cpu"))
    params = trainable_parameters(model)
    rows = load_rows(w, tokenizer)
    tokens = tokenize_prompts(rows, tokenizer, "chat", t.max_seq_length - r.max_new_tokens, "bench")
    optimizer, scheduler = make_optimizer(params, t, steps + warmup)
    loss, plan = loss_settings(cfg), scoring_plan(cfg)
    backend = SingleProcess(model, None, optimizer, scheduler, t.max_grad_norm, World())
    sampling = sampling_params(cfg)
    timers = Timers(optimizer)
    prefill = PrefillTimer(model)

    records = []
    for step in range(1, steps + warmup + 1):
        timers.reset()
        t0 = time.perf_counter()
        indices = prompt_indices(len(rows), step, w.num_prompts, t.seed)
        seeds = [sampling_seed(t.seed, step, k) for k in range(len(indices))]
        prefill.arm()
        with backend.generation() as policy:
            batch = generate(policy, tokenizer, [tokens[i] for i in indices], r.group_size, sampling, seeds)
        t1 = time.perf_counter()
        matrix = scoring.score(reward_fns, batch.texts, scoring.expand_columns([rows[i] for i in indices],
                                                                                 r.group_size))
        shaped = shaping.shape_rewards(matrix, weights, batch, cfg.variants, r.max_new_tokens)
        total = shaped.total
        advantages = shaping.advantages(shaped, r.group_size, cfg.variants, t.advantage_scale)
        loss_mask, token_weights = shaping.loss_mask_and_weights(batch, total, cfg.variants)
        t2 = time.perf_counter()
        with backend.reference_scorer() as reference:
            ref_logp = frozen_logprobs(reference, batch, plan)
        t3 = time.perf_counter()
        stats = policy_update(backend.scorer, backend, batch, UpdateTargets(advantages, None, ref_logp, loss_mask,
                                                                              token_weights), loss, plan,
                              collect_stats=True)
        t4 = time.perf_counter()
        update = t4 - t3
        records.append({
            "step": step, "warmup": step <= warmup, "step_s": t4 - t0,
            "phases_s": {"generate": t1 - t0, "reward_advantage": t2 - t1, "ref_logprobs": t3 - t2,
                         "update_forward_other": update - timers.backward - timers.optimizer,
                         "update_backward": timers.backward, "update_optimizer": timers.optimizer},
            "generate_prefill_s": prefill.seconds,
            "prompt_lens": [len(tokens[i]) for i in indices],
            "completion_lens": batch.completion_mask.sum(1).int().tolist(),
            "loss": stats["loss"], "kl": stats["kl"], "reward_mean": total.mean().item(),
        })
        print(f"ours step {step}: {t4 - t0:.2f} s {json.dumps(records[-1]['phases_s'])}", flush=True)
    return {"side": "ours", "workload": workload, "dtype": dtype, "steps": records,
            "cpu_matmul": cpu_matmul, "onednn_plan": onednn_plan(cpu_matmul),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}


def main(argv=None):
    parser = child_parser(__doc__)
    parser.add_argument("--cpu-matmul", default="auto", choices=CPU_MATMUL,
                        help="model.cpu_matmul (grpo/onednn_linear.py)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.workload, args.steps, args.warmup, args.dtype, threads=args.threads,
                         cpu_matmul=args.cpu_matmul)))


if __name__ == "__main__":
    main()
