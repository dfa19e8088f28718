"""The GPU check: what a GPU machine must show before a user trusts the project on one.

    .venv/bin/python scripts/gpu_check.py --out runs/gpu-check        # on a GPU machine (< 8 minutes)
    .venv/bin/python scripts/gpu_check.py --cpu --out /tmp/gpu-check  # the same flow on CPU, tiny budgets

1. The CUDA-marked tests (`pytest -m cuda`).
2. One GPU: the demo recipe in bfloat16, killed with SIGKILL after its third step's checkpoint,
   then the same command again, which must resume and finish.
3. Two GPUs (skipped with one): the published recipe with the offline demo model and the local
   GSM8K copy, 2 steps under train.strategy=zero3 and under ddp, over NCCL.
It prints, per run, the seconds per step, tokens/s and peak GPU memory, writes them to
OUT/gpu_check.json, and exits non-zero if any part failed. Needs the demo model (fetched from
PyPI on first use) and GSM8K at ../shared/data/gsm8k or $GSM8K_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def gsm8k_dir() -> Path:
    for candidate in (os.environ.get("GSM8K_DIR"), REPO.parent / "shared" / "data" / "gsm8k"):
        if candidate and (Path(candidate) / "train.jsonl").is_file():
            return Path(candidate)
    sys.exit("GSM8K not found: put it at ../shared/data/gsm8k or set GSM8K_DIR")


def records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, lines) if "loss" in r]


def summarize(name: str, out: Path, seconds: float) -> dict:
    steps = records(out)
    peak = max((r.get("memory/peak_reserved_gib") or 0 for r in steps), default=0)
    return {
        "run": name, "steps": [r["step"] for r in steps], "wall_s": round(seconds, 1),
        "s_per_step": round(sum(r["time/step_s"] for r in steps) / max(len(steps), 1), 2),
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in steps) / max(len(steps), 1), 1),
        "peak_gpu_gib": round(peak, 2),
        "final_adapter": (out / "final" / "adapter" / "adapter_model.safetensors").is_file(),
    }


def run(command: list[str], env: dict, log: Path, timeout: float) -> int:
    with log.open("a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9


def killed_and_resumed(args, env: dict, out: Path, log: Path) -> dict:
    """The demo recipe: SIGKILL once step 3's checkpoint exists, then the same command to the end."""
    command = [PYTHON, "train.py", "--recipe", "recipes/cpu-demo.yaml", "--output-dir", str(out),
               f"model.dtype={'float32' if args.cpu else 'bfloat16'}", "train.max_steps=5", "data.limit_eval=8",
               *(["rollout.max_new_tokens=16", "log.eval_max_new_tokens=8"] if args.cpu else [])]
    started = time.perf_counter()
    with log.open("a") as handle:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        third = out / "checkpoints" / "step-000003" / "trainer_state.pt"
        while not third.is_file() and proc.poll() is None and time.perf_counter() - started < args.timeout:
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = max((r["step"] for r in records(out)), default=0)
    code = run(command, env, log, args.timeout)
    result = summarize("one GPU: demo recipe, killed after step 3, resumed", out, time.perf_counter() - started)
    result.update(killed_after_step=killed_at, ok=code == 0 and killed_at >= 3 and result["steps"] == [1, 2, 3, 4, 5]
                  and result["final_adapter"])
    return result


def published_two_gpus(args, env: dict, strategy: str, out: Path, log: Path) -> dict:
    data = gsm8k_dir()
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py",
               "--recipe", "recipes/qwen2.5-0.5b-gsm8k.yaml", "--output-dir", str(out),
               "model.name=smollm2-135m-demo", f"data.train_file={data / 'train.jsonl'}",
               f"data.test_file={data / 'test.jsonl'}", "data.limit_train=64", "data.limit_eval=8",
               "train.max_steps=2", f"train.strategy={strategy}",
               *(["rollout.max_new_tokens=8", "train.global_batch_prompts=8"] if args.cpu
                 else ["rollout.max_new_tokens=128"])]
    started = time.perf_counter()
    code = run(command, env, log, args.timeout)
    result = summarize(f"two GPUs: published recipe, {strategy}", out, time.perf_counter() - started)
    result["ok"] = code == 0 and result["steps"] == [1, 2] and result["final_adapter"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--cpu", action="store_true", help="run the same flow on CPU with tiny budgets")
    parser.add_argument("--timeout", type=float, default=300, help="seconds each run may take")
    args = parser.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count()
    if not args.cpu and gpus == 0:
        print("no CUDA GPU here: run this on a GPU machine, or pass --cpu to check the flow", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if args.cpu:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    results = []
    if not args.cpu:
        code = run([PYTHON, "-m", "pytest", "-q", "-m", "cuda", "tests"], env, log, args.timeout)
        results.append({"run": "pytest -m cuda", "ok": code == 0})
    results.append(killed_and_resumed(args, env, args.out / "demo-resume", log))
    if args.cpu or gpus >= 2:
        for strategy in ("zero3", "ddp"):
            results.append(published_two_gpus(args, env, strategy, args.out / f"published-{strategy}", log))
    else:
        results.append({"run": "two GPUs", "ok": True, "skipped": "one GPU on this machine"})
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(f"{'run':<55} {'ok':<5} {'s/step':>8} {'tokens/s':>10} {'peak GiB':>9}")
    for r in results:
        print(f"{r['run']:<55} {str(r['ok']):<5} {r.get('s_per_step', '-'):>8} {r.get('tokens_per_s', '-'):>10} "
              f"{r.get('peak_gpu_gib', '-'):>9}")
    print(f"log: {log}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
