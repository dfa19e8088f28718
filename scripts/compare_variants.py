"""Short demo runs of each variant against plain GRPO, same seed, one table (issue: variants evidence).

    .venv/bin/python scripts/compare_variants.py --steps 8 --out runs/variants [--only plain gspo ...]

Every run is `train.py --recipe recipes/cpu-demo.yaml` with the variant's overrides, so the
data order, sampling seed and evaluation rows are the same. The plain run keeps all its
checkpoints; the trajectory-extrapolation row fits the first half of them and predicts the
last step's adapter, evaluated on the same held-out rows as the real one. Writes
OUT/variants.json and OUT/variants.md; figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extrapolate import extrapolate_run  # noqa: E402
from grpo.rollout import scoring  # noqa: E402
from grpo.runtime import checkpoint  # noqa: E402
from grpo.runtime.config import load_config  # noqa: E402
from grpo.training.evaluation import evaluate_rows  # noqa: E402
from grpo.training.policy import build_policy  # noqa: E402
from grpo.training.prompts import load_prompt_sets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

RECIPE = "recipes/cpu-demo.yaml"
LABEL_FREE_REWARDS = ("rewards=[{name: majority_vote, weight: 1.0}, "
                      "{name: gsm8k_correctness, weight: 0.0}]")  # weight 0: logged, never trained on

# name -> recipe overrides (on top of the demo recipe)
VARIANTS = {
    "plain": [],
    "clip_higher": ["loss.eps_high=0.28"],
    "dual_clip": ["loss.policy=dual_clip"],
    "gspo": ["loss.policy=gspo", "loss.eps_low=3e-4", "loss.eps_high=4e-4"],
    "dynamic_sampling": ["variants.dynamic_sampling=true"],
    "overlong_mask": ["variants.overlong=mask"],
    "overlong_soft": ["variants.overlong=soft"],
    "entropy_top_20pct": ["variants.entropy_top_fraction=0.2"],
    "reward_weighting": ["variants.reward_weighting=dynamic"],
    "token_credit": ["variants.token_credit=true"],
    "label_free": [LABEL_FREE_REWARDS, "variants.self_certainty_weight=0.5"],
}


def run_variant(name: str, overrides: list[str], steps: int, out: Path, extra: list[str]) -> dict:
    keep = ["log.keep_checkpoints=0"] if name == "plain" else []  # extrapolation needs them all
    argv = ["--recipe", RECIPE, "--output-dir", str(out / name), "--no-resume",
            f"train.max_steps={steps}", "log.report_to=[]", *keep, *overrides, *extra]
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, check=True)
    summary = json.loads((out / name / "summary.json").read_text())
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "reward/total/mean" in r]
    weights = [{k: v for k, v in r.items() if k.startswith("reward_weight/")} for r in train_records]
    return {
        "variant": name, "overrides": overrides, "steps": steps,
        "before": summary["before"], "after": summary["after"],
        "train_reward_first": train_records[0]["reward/total/mean"] if train_records else None,
        "train_reward_last": train_records[-1]["reward/total/mean"] if train_records else None,
        "reward_weights_first_last": [weights[0], weights[-1]] if weights and weights[0] else None,
        "mean_step_s": summary["mean_step_s"], "wall_s": time.perf_counter() - started,
    }


def evaluate_adapter(adapter_dir: Path, extra: list[str]) -> dict:
    """Held-out evaluation of a saved adapter with the demo recipe's model, rows and rewards."""
    cfg = load_config(RECIPE, extra)
    reward_fns = scoring.build_rewards(cfg.rewards)
    model, tokenizer, _ = build_policy(cfg, None)
    checkpoint.load_trainable_weights(model, adapter_dir)
    _, held_out = load_prompt_sets(cfg, tokenizer)
    result, _ = evaluate_rows(model, tokenizer, held_out.rows, held_out.tokens, reward_fns,
                              cfg.log.eval_max_new_tokens or cfg.rollout.max_new_tokens,
                              tuple(cfg.rollout.stop_strings), cfg.log.eval_batch_size,
                              cfg.log.accuracy_reward)
    return result


def extrapolation_row(out: Path, steps: int, extra: list[str]) -> dict:
    use_first = max(2, steps // 2)
    started = time.perf_counter()
    report = extrapolate_run(out / "plain", use_first, steps, out / "extrapolated")
    fit_s = time.perf_counter() - started
    stopped = checkpoint.checkpoint_root(out / "plain") / f"step-{use_first:06d}" / "adapter"
    return {
        "variant": f"extrapolated (first {use_first} -> step {steps})", "steps": use_first,
        "after": evaluate_adapter(out / "extrapolated", extra),
        "stopped_at_k": evaluate_adapter(stopped, extra), "report": report, "fit_s": fit_s,
    }


def table(rows: list[dict]) -> str:
    lines = ["| variant | steps trained | held-out acc before -> after | held-out reward after "
             "| train reward first -> last step | mean step s |", "|---|---|---|---|---|---|"]
    for r in rows:
        before, after = r.get("before") or {}, r["after"]

        def fmt(d, key):
            return f"{d[key]:.3f}" if key in d else "-"
        train_reward = (f"{r['train_reward_first']:.3f} -> {r['train_reward_last']:.3f}"
                        if r.get("train_reward_first") is not None else "-")
        step = f"{r['mean_step_s']:.1f}" if r.get("mean_step_s") else "-"
        lines.append(f"| {r['variant']} | {r['steps']} | {fmt(before, 'eval/accuracy')} -> "
                     f"{fmt(after, 'eval/accuracy')} | {fmt(after, 'eval/reward_mean')} | {train_reward} | {step} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps per variant")
    parser.add_argument("--out", type=Path, default=Path("runs/variants"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value for every run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "variants.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {r["variant"] for r in rows}
    for name in args.only or list(VARIANTS):
        if name in done:  # a re-run continues where an interrupted comparison stopped
            continue
        rows.append(run_variant(name, VARIANTS[name], args.steps, args.out, args.overrides))
        results_path.write_text(json.dumps(rows, indent=2))
    if "plain" in {r["variant"] for r in rows} and not any(r["variant"].startswith("extrapolated") for r in rows):
        rows.append(extrapolation_row(args.out, args.steps, args.overrides))
        results_path.write_text(json.dumps(rows, indent=2))
    (args.out / "variants.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
