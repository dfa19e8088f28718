"""Benchmark: this project's GRPO step vs TRL's GRPOTrainer, side by side, in one sitting.

    python -m bench.run --workload a b [--steps 3] [--warmup 1] [--sides ours trl] [--out PATH]

For each workload, each side runs in its own child process (bench.ours, bench.trl_side), one
after the other, so their peak RSS are separate and they never share the CPUs. The 2048^2 GEMM
peak (the best of torch.mm and oneDNN, in the run's dtype) is measured in this process right
before and after each child (the higher counts), and the load average (other processes on the
machine) is recorded around each child: on a shared machine timings are noisy, so compare the
ratio within one run, never figures from different runs.
Results go to --out (default bench-results/<timestamp>.json); each child's stderr to a
.log beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.flops import Shape, decode_products_gflops, gemm_peak_gflops, step_flops
from bench.workloads import WORKLOADS, Shared, describe
from grpo.runtime.config import CPU_MATMUL

CHILDREN = {"ours": "bench.ours", "trl": "bench.trl_side"}


def run_child(side: str, workload: str, steps: int, warmup: int, threads: int, log_path: Path,
              extra: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", CHILDREN[side], workload, "--steps", str(steps), "--warmup", str(warmup),
               "--threads", str(threads), *extra]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        last = ""
        for line in proc.stdout:
            if line.startswith("{"):
                last = line
            else:
                print(f"  [{side} {workload}] {line.rstrip()}", flush=True)
        proc.wait()
    info = {"load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            "wall_s": time.perf_counter() - started, "returncode": proc.returncode, "log": str(log_path)}
    if proc.returncode != 0 or not last:
        tail = log_path.read_text()[-3000:]
        return {"side": side, "workload": workload, "error": tail.strip().splitlines()[-1] if tail.strip() else
                f"exit code {proc.returncode}", **info}
    return {**json.loads(last), **info}


def summarize(result: dict, group_size: int) -> dict:
    """Mean per-step time, completions/s and phase means over the measured (non-warm-up) steps."""
    measured = [s for s in result.get("steps", []) if not s["warmup"]]
    if not measured:
        return {}
    step_s = statistics.mean(s["step_s"] for s in measured)
    completions = statistics.mean(len(s.get("completion_lens", [])) for s in measured) or None
    phases = {}
    for s in measured:
        for k, v in s.get("phases_s", {}).items():
            phases.setdefault(k, []).append(v)
    lens = [n for s in measured for n in s.get("completion_lens", [])]
    return {"measured_steps": len(measured), "step_s_mean": step_s, "step_s": [s["step_s"] for s in measured],
            "completions_per_step": completions,
            "completions_per_s": completions / step_s if completions else None,
            "completion_tokens_mean": statistics.mean(lens) if lens else None,
            "phases_s_mean": {k: statistics.mean(v) for k, v in phases.items()},
            "peak_rss_mib": result.get("peak_rss_mib")}


def demo_shape() -> Shape:
    from transformers import AutoConfig

    from grpo.runtime.model import demo_model_dir

    return Shape.from_config(AutoConfig.from_pretrained(demo_model_dir()), Shared().lora_r)


def flops_report(result: dict, gemm: dict, group_size: int, shape: Shape) -> dict:
    """Achieved FLOP/s of our step and its phases, as a fraction of the measured GEMM peak."""
    peak = gemm["best_gflops"] * 1e9
    totals, times = {}, {}
    for s in (s for s in result["steps"] if not s["warmup"]):
        f = step_flops(shape, s["prompt_lens"], s["completion_lens"], group_size,
                       lora_in_generation=result.get("dtype", "float32") != "float32")
        p = s["phases_s"]
        pairs = {"step": (f["total"], s["step_s"]), "generate": (f["generate"], p["generate"]),
                 "ref_logprobs": (f["ref_logprobs"], p["ref_logprobs"]),
                 "update": (f["update_forward"] + f["update_backward"],
                            p["update_forward_other"] + p["update_backward"] + p["update_optimizer"])}
        if "generate_prefill_s" in s:  # results from before the prompt pass was timed have no split
            pairs["generate_prefill"] = (f["generate_prefill"], s["generate_prefill_s"])
            pairs["generate_decode"] = (f["generate_decode"], p["generate"] - s["generate_prefill_s"])
        for k, (fl, t) in pairs.items():
            totals[k] = totals.get(k, 0.0) + fl
            times[k] = times.get(k, 0.0) + t
    return {k: {"gflop": totals[k] / 1e9, "gflops_per_s": totals[k] / times[k] / 1e9,
                "fraction_of_gemm_peak": totals[k] / times[k] / peak} for k in totals}


def _gemm_text(gemm: dict) -> str:
    return f"{gemm['best_gflops']:.1f} GFLOP/s (" + ", ".join(
        f"{k} {v['best_gflops']:.1f}" for k, v in gemm.get("backends", {}).items()) + ")"


def print_workload(name: str, entry: dict) -> None:
    ours, trl = entry["sides"].get("ours", {}), entry["sides"].get("trl", {})
    so, st = ours.get("summary", {}), trl.get("summary", {})
    print(f"\n== workload {name}: {WORKLOADS[name].description}")
    for side, res, summ in (("ours", ours, so), ("trl", trl, st)):
        if "error" in res:
            print(f"  {side}: FAILED: {res['error']}")
            continue
        if not summ:
            continue
        print(f"  {side:4s} step {summ['step_s_mean']:.2f} s (steps {', '.join(f'{x:.2f}' for x in summ['step_s'])}), "
              f"{summ['completions_per_s']:.2f} completions/s, mean completion {summ['completion_tokens_mean']:.1f} "
              f"tokens, peak RSS {summ['peak_rss_mib']:.0f} MiB, load {res['load_avg_before'][0]:.2f}->"
              f"{res['load_avg_after'][0]:.2f}, GEMM {_gemm_text(res['gemm'])}")
        print("       phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in summ["phases_s_mean"].items()))
        if res.get("gradient_checkpointing"):
            print("       (TRL with gradient checkpointing)")
    if "speedup" in entry:
        print(f"  speedup (TRL step time / ours): {entry['speedup']:.2f}x")
    for k, v in entry.get("ours_flops", {}).items():
        print(f"  ours {k}: {v['gflop']:.0f} GFLOP, {v['gflops_per_s']:.1f} GFLOP/s = "
              f"{100 * v['fraction_of_gemm_peak']:.0f}% of the GEMM peak")
    if "decode_ceiling" in entry:
        c = entry["decode_ceiling"]
        print(f"  ceiling of a decode step: its weight products alone at {c['rows']} rows (layers on "
              f"{c['layers']['backend']}, head on {c['head']['backend']}) run at {c['best_gflops']:.1f} GFLOP/s = "
              f"{100 * c['fraction_of_gemm_peak']:.0f}% of the GEMM peak")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", default=["a", "b"], choices=sorted(WORKLOADS))
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=sorted(CHILDREN))
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per side, not measured")
    parser.add_argument("--threads", type=int, default=Shared().threads,
                        help="torch threads on both sides (and for the GEMM peak); the workloads are defined at 2")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL with gradient checkpointing (its default); ours never uses it")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model weights on both sides (LoRA adapters stay float32), and the GEMM peak's dtype")
    parser.add_argument("--cpu-matmul", default="auto", choices=CPU_MATMUL,
                        help="our side's model.cpu_matmul (TRL runs PyTorch's default products)")
    parser.add_argument("--out", help="JSON results path (default bench-results/<timestamp>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or f"bench-results/{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"started_utc": stamp, "host_cpus": os.cpu_count(), "torch": torch.__version__,
              "steps": args.steps, "warmup": args.warmup, "threads": args.threads, "dtype": args.dtype,
              "cpu_matmul": args.cpu_matmul, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "workloads": {}}
    for name in args.workload:
        w = WORKLOADS[name]
        entry = {**describe(w, Shared()), "sides": {}}
        report["workloads"][name] = entry
        for side in args.sides:
            gemm = gemm_peak_gflops(dtype=getattr(torch, args.dtype))
            print(f"[{name}] {side}: starting (GEMM {_gemm_text(gemm)}, "
                  f"load {os.getloadavg()[0]:.2f})", flush=True)
            res = run_child(side, name, args.steps, args.warmup, args.threads, out.with_name(f"{out.stem}-{name}-{side}.log"),
                            ("--dtype", args.dtype,
                             *(("--gradient-checkpointing",) if side == "trl" and args.trl_gradient_checkpointing else ()),
                             *(("--cpu-matmul", args.cpu_matmul) if side == "ours" else ())))
            # The VM's speed drifts (2048^3 GEMM: 139-185 GFLOP/s within an hour on one machine): the peak
            # is timed again after the child, and the higher one counts, so fractions are not flattered.
            res["gemm_before"], res["gemm_after"] = gemm, gemm_peak_gflops(dtype=getattr(torch, args.dtype))
            res["gemm"] = max(res["gemm_before"], res["gemm_after"], key=lambda g: g["best_gflops"])
            res["summary"] = summarize(res, w.group_size) if "error" not in res else {}
            entry["sides"][side] = res
            out.write_text(json.dumps(report, indent=1))  # partial results survive a later failure
        so = entry["sides"].get("ours", {}).get("summary")
        st = entry["sides"].get("trl", {}).get("summary")
        if so and st:
            entry["speedup"] = st["step_s_mean"] / so["step_s_mean"]
        if so:
            shape = demo_shape()
            entry["ours_flops"] = flops_report(entry["sides"]["ours"], entry["sides"]["ours"]["gemm"], w.group_size, shape)
            ceiling = decode_products_gflops(shape, w.num_prompts * w.group_size, dtype=getattr(torch, args.dtype))
            peak = entry["sides"]["ours"]["gemm"]["best_gflops"]
            entry["decode_ceiling"] = {**ceiling, "fraction_of_gemm_peak": ceiling["best_gflops"] / peak}
        out.write_text(json.dumps(report, indent=1))
        print_workload(name, entry)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
