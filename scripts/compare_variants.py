"""Variants against their baseline on the CPU demo: several paired seeds, one table with 95% intervals.

    .venv/bin/python scripts/compare_variants.py --out runs/variants --num-seeds 3 [--steps 8]
        [--eval-rows 200] [--only delta_proxy kl_cov ...] [--run-seeds 0 1] [--teacher-adapter DIR]
        [--threads N] [--tabulate] [section.key=value ...]

A comparison is a folder, OUT. Its plan is fixed when it is created and written in
OUT/comparison.json: the seeds (0 .. --num-seeds - 1), --steps, --eval-rows and the extra
overrides. Later invocations continue it (they may omit these options; given, they must match) and
may add variants, but not seeds: adding seeds once intervals have been seen, until one excludes 0,
makes the intervals lie (optional stopping). More seeds means a new comparison (another --out).

Every run is `train.py --recipe recipes/cpu-demo.yaml` with the variant's overrides, `train.seed=S`,
`data.limit_eval=ROWS` and the extra overrides. The seed drives the data order, the sampling seeds
and, for the synthetic task, which problems are generated: the runs of one seed see the same prompts
and sampling seeds at step 1 and are evaluated (greedy) on the same held-out rows. Each run writes
eval_rows.jsonl (one line per held-out row); a variant's seed-S run is paired with its baseline's
seed-S run, per seed and per row. scripts/variant_stats.py defines the statistics: a hierarchical
bootstrap over seeds and rows for each 95% interval and p-value, Holm's adjustment over the table's
comparisons for the decision. The pre-training evaluation does not depend on the variant: only the
plain runs make it (one per seed, as the rows depend on it).

A variant is compared with its own `baseline` and with plain when that differs (kl_cov against
plain_mu2, its control with the same two updates per rollout, then against plain). By default all
variants run, topd only when --teacher-adapter is given; --only runs the named ones and their
baselines, --run-seeds only some of the comparison's seeds (to share the work between processes).
Each finished (variant, seed) run is saved as OUT/VARIANT/seed-S/result.json; a re-run skips those
and retries failed ones (their log is OUT/VARIANT/seed-S/train.log). OUT/variants.json and
OUT/variants.md are rewritten after every run.

Dropped from the single-seed version: the trajectory-extrapolation row. It is not a training variant,
and with seeds it would need every checkpoint of each plain run kept and two more held-out
evaluations per seed in this process; scripts/extrapolate.py does it on one run (log.keep_checkpoints=0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grpo.runtime.tracking import read_metrics  # noqa: E402
from scripts import variant_stats  # noqa: E402

RECIPE = "recipes/cpu-demo.yaml"
TEACHER = "{teacher_adapter}"  # replaced by --teacher-adapter
PLAN = "comparison.json"  # in OUT: what the comparison runs, fixed when it is created
DEFAULT_STEPS, DEFAULT_EVAL_ROWS = 8, 200


@dataclass(frozen=True)
class Variant:
    overrides: tuple[str, ...]  # on top of the demo recipe
    baseline: str = "plain"  # compared with this variant's runs of the same seeds (and always with plain)


VARIANTS = {
    "plain": Variant(()),
    "delta_paper": Variant(("tokens.credit=paper",)),
    "delta_proxy": Variant(("tokens.credit=proxy",)),
    "pow3r": Variant(("reward_shaping.weighting=dynamic",)),  # the demo has two criteria: format, correctness
    "overlong_mask": Variant(("tokens.overlong_mask=true",)),
    "plain_mu2": Variant(("train.num_iterations=2",)),  # kl_cov's control: KL-Cov is inert with one update
    "kl_cov": Variant(("loss.policy=kl_cov", "train.num_iterations=2"), baseline="plain_mu2"),
    "topd": Variant(("objective.name=opd", "objective.horizon=truncated", "objective.horizon_fraction=0.25",
                     f"objective.teacher_adapter={TEACHER}")),
}


def needs_teacher(name: str) -> bool:
    return any(TEACHER in o for o in VARIANTS[name].overrides)


def selected_variants(only: list[str] | None, teacher_adapter: Path | None) -> list[str]:
    """The variants to run, in table order, with the baselines they are compared with.

    Default: all, but those that need a teacher adapter only when --teacher-adapter is given.
    """
    if only:
        missing = [n for n in only if needs_teacher(n)] if teacher_adapter is None else []
        if missing:
            raise SystemExit(f"--only {' '.join(missing)}: needs --teacher-adapter DIR (a trained LoRA adapter "
                             "folder, e.g. runs/cpu-demo/final/adapter)")
        chosen = set(only)
    else:
        chosen = {n for n in VARIANTS if teacher_adapter is not None or not needs_teacher(n)}
    chosen |= {"plain"} | {VARIANTS[n].baseline for n in chosen}
    return [n for n in VARIANTS if n in chosen]


def train_args(name: str, seed: int, steps: int, eval_rows: int, teacher_adapter: Path | None,
               extra: list[str]) -> list[str]:
    """train.py's overrides for one (variant, seed) run; the plain runs also evaluate before training."""
    overrides = [o.replace(TEACHER, str(teacher_adapter)) for o in VARIANTS[name].overrides]
    return ["--recipe", RECIPE, f"train.seed={seed}", f"train.max_steps={steps}", f"data.limit_eval={eval_rows}",
            f"log.eval_before={'true' if name == 'plain' else 'false'}", "log.report_to=[]", *overrides, *extra]


def run_one(name: str, seed: int, argv: list[str], run_dir: Path, threads: int) -> dict | None:
    """Train one (variant, seed) from scratch; its result, also saved as run_dir/result.json (None: it failed)."""
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt leaves nothing behind
    run_dir.mkdir(parents=True)
    command = [sys.executable, str(REPO / "train.py"), "--output-dir", str(run_dir), "--no-resume",
               *(["--threads", str(threads)] if threads else []), *argv]
    print(f"[compare_variants] {name} seed {seed}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with (run_dir / "train.log").open("w") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - started
    if code != 0:
        print(f"[compare_variants] {name} seed {seed} failed (exit {code}); see {run_dir / 'train.log'}", flush=True)
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    train_records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward/total/mean" in r]
    rows = variant_stats.final_rows(read_metrics(run_dir / "eval_rows.jsonl"))
    result = {
        "variant": name, "seed": seed, "train_args": argv,
        "steps": summary["steps"], "mean_step_s": summary["mean_step_s"], "wall_s": wall_s,
        "train_reward_last": train_records[-1]["reward/total/mean"] if train_records else None,
        "acc_before": (summary.get("before") or {}).get("eval/accuracy"),
        "acc_after": variant_stats.accuracy(rows),
        "reward_after": summary["after"].get("eval/reward_mean"),
        "rows": {str(i): c for i, c in rows.items()},  # held-out row index -> correct 0/1
    }
    (run_dir / "result.json").write_text(json.dumps(result))
    return result


def load_result(run_dir: Path, argv: list[str]) -> dict | None:
    """The saved result of a finished run, if any; made with other settings is an error."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result["train_args"] != argv:
        raise SystemExit(f"{path} was made with train.py {' '.join(result['train_args'])}, this comparison "
                         f"runs {' '.join(argv)}: use another --out, or delete {run_dir} to redo it")
    return result


def finished_runs(out: Path) -> list[tuple[str, int]]:
    """(variant, seed) of every finished run saved under `out`."""
    return sorted((path.parent.parent.name, int(path.parent.name.removeprefix("seed-")))
                  for path in out.glob("*/seed-*/result.json"))


def fixed_plan(out: Path, num_seeds: int | None, steps: int | None, eval_rows: int | None,
               overrides: list[str]) -> dict:
    """The comparison's plan from OUT/comparison.json, written there from these arguments when OUT is new.

    An argument left out (None, or no overrides) takes the plan's value; one given must match it,
    and the seeds never change: more seeds is a new comparison.
    """
    path = out / PLAN
    if not path.is_file():
        return _new_plan(out, num_seeds, steps, eval_rows, overrides)
    plan = json.loads(path.read_text())
    if num_seeds is not None and list(range(num_seeds)) != plan["seeds"]:
        done = {seed for _, seed in finished_runs(out)}
        state = ("every seed has finished runs, so its intervals may have been seen" if done >= set(plan["seeds"])
                 else f"runs of seeds {sorted(done)} have finished" if done else "no run has finished yet")
        raise SystemExit(
            f"{out} is a comparison of {len(plan['seeds'])} seeds ({path}); --num-seeds {num_seeds} would change "
            f"that ({state}). A comparison's seeds are fixed when it is created: seeds added after seeing its "
            f"intervals bias them. Start a new comparison with another --out (e.g. --out {out}-{num_seeds}seeds "
            f"--num-seeds {num_seeds}); leave --num-seeds out to continue this one.")
    asked = {"steps": steps, "eval_rows": eval_rows, "overrides": overrides or None}
    changed = [f"{key} {plan[key]!r} (asked: {value!r})" for key, value in asked.items()
               if value is not None and value != plan[key]]
    if changed:
        raise SystemExit(f"{out} was created with {'; '.join(changed)} ({path}): use another --out for other "
                         "settings, or leave these options out to continue it")
    return plan


def _new_plan(out: Path, num_seeds: int | None, steps: int | None, eval_rows: int | None,
              overrides: list[str]) -> dict:
    if num_seeds is None:
        raise SystemExit(f"{out} is a new comparison: give --num-seeds N, the number of paired seeds (at least 2) "
                         "decided before any result is seen")
    plan = {"recipe": RECIPE, "seeds": list(range(num_seeds)), "steps": steps or DEFAULT_STEPS,
            "eval_rows": eval_rows or DEFAULT_EVAL_ROWS, "overrides": overrides}
    if finished_runs(out):
        seeds = sorted({seed for _, seed in finished_runs(out)})
        raise SystemExit(
            f"{out} holds finished runs (seeds {seeds}) but no {PLAN}: it was made before comparisons fixed "
            f"their seeds. If seeds {seeds} were chosen before any result was seen, write "
            f"{json.dumps({**plan, 'seeds': seeds})} to {out / PLAN} to continue it; otherwise use another --out.")
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN).write_text(json.dumps(plan, indent=2) + "\n")
    return plan


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(results: list[dict], failed: list[tuple[str, int]], settings: dict) -> dict:
    """variants.json: settings, per-variant run figures, paired comparisons, failed runs."""
    by_variant: dict[str, list[dict]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    runs = [{
        "variant": name, "seeds": [r["seed"] for r in rs], "steps": sorted({r["steps"] for r in rs}),
        "acc_before": mean([r["acc_before"] for r in rs]), "acc_after": mean([r["acc_after"] for r in rs]),
        "mean_step_s": mean([r["mean_step_s"] for r in rs]), "wall_s_total": sum(r["wall_s"] for r in rs),
        "train_reward_last": mean([r["train_reward_last"] for r in rs]),
    } for name, rs in by_variant.items()]
    rows = {name: {r["seed"]: {int(i): c for i, c in r["rows"].items()} for r in rs} for name, rs in by_variant.items()}
    comparisons = []
    for name in by_variant:
        for baseline in dict.fromkeys([VARIANTS[name].baseline, "plain"]):  # its own control first
            if name == baseline or baseline not in rows or not rows[name].keys() & rows[baseline].keys():
                continue
            comparisons.append({"variant": name, "baseline": baseline,
                                **variant_stats.compare(rows[name], rows[baseline])})
    return {"settings": settings, "runs": runs, "comparisons": variant_stats.decide(comparisons),
            "failed": [{"variant": n, "seed": s} for n, s in failed]}


def comparison_row(c: dict) -> str:
    """One line of the comparison table."""
    per_seed = ", ".join(f"{d:+.3f}" for d in c["per_seed_diff"])
    if c["p"] is None:
        interval, p, p_holm = f"{c['mean_diff']:+.3f} [no interval: one seed]", "-", "-"
    else:
        interval = f"{c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
        p, p_holm = f"{c['p']:.4f}", f"{c['p_holm']:.4f}"
    return (f"| {c['variant']} | {c['baseline']} | {', '.join(map(str, c['seeds']))} | "
            f"{mean(c['acc_variant']):.3f} vs {mean(c['acc_baseline']):.3f} | {per_seed} | {interval} | "
            f"{p} | {p_holm} | {_verdict(c)} |")


def _verdict(c: dict) -> str:
    if c["differs"] is None:
        return f"undecided ({len(c['seeds'])} seeds < {variant_stats.MIN_SEEDS_TO_DECIDE})"
    return "**yes**" if c["differs"] else "no"


COMPARISON_HEADER = (
    "Δacc = held-out accuracy (greedy) of the variant minus its baseline's, paired by seed: same prompts "
    "and sampling seeds at step 1, same held-out rows.\n"
    f"The 95% interval and p come from a hierarchical bootstrap ({variant_stats.BOOTSTRAP_RESAMPLES} "
    f"resamples, bootstrap seed {variant_stats.BOOTSTRAP_SEED}): seeds drawn with replacement, then each "
    "drawn seed's held-out rows, the variant and its baseline sharing every draw. p is two-sided "
    "(the interval excludes 0 exactly when p < 0.05). **\"Differs\" is decided by Holm's adjusted p "
    "<= 0.05 over the comparisons of this table** (the chance of any false \"yes\" in it is that of one "
    "comparison's p < 0.05); "
    "the intervals are per comparison, not adjusted. An interval that contains 0 does not show that "
    "the variants are equal: this evidence cannot tell them apart at this level. With few seeds the "
    "interval is wide, and too narrow still where seed-to-seed noise dominates (the bootstrap knows only "
    f"the seeds that ran): below {variant_stats.MIN_SEEDS_TO_DECIDE} seeds there is no verdict "
    "(\"undecided\").\n\n"
    "| variant | vs | seeds | acc variant vs baseline (mean) | Δacc per seed | mean Δacc [95% interval] "
    "| p | p (Holm) | differs (Holm, 5%) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def run_row(r: dict) -> str:
    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"
    before = f" (before training: {r['acc_before']:.3f})" if r["acc_before"] is not None else ""
    return (f"| {r['variant']} | {', '.join(map(str, r['seeds']))} | {fmt(r['acc_after'], '.3f')}{before} | "
            f"{'/'.join(map(str, r['steps']))} | {fmt(r['mean_step_s'], '.1f')} | {r['wall_s_total']:.0f} | "
            f"{fmt(r['train_reward_last'], '.3f')} |")


def markdown(summary: dict) -> str:
    s = summary["settings"]
    lines = [f"# Variants on {RECIPE}", "",
             f"seeds {', '.join(map(str, s['seeds']))}; {s['steps']} steps; {s['eval_rows']} held-out rows; "
             f"extra overrides: {' '.join(s['overrides']) or 'none'}", "",
             "## Paired comparisons", "", COMPARISON_HEADER,
             *map(comparison_row, summary["comparisons"]), "",
             "## Runs (means over seeds; wall time summed)", "",
             "| variant | seeds | held-out acc | steps trained | mean step s | total wall s | final train reward |",
             "|---|---|---|---|---|---|---|",
             *map(run_row, summary["runs"])]
    if summary["failed"]:
        lines += ["", "## Failed runs (see OUT/VARIANT/seed-S/train.log; a re-run retries them)", "",
                  *(f"- {f['variant']} seed {f['seed']}" for f in summary["failed"])]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/variants"), help="the comparison's folder")
    parser.add_argument("--num-seeds", type=int,
                        help="paired seeds 0..N-1; needed to create a comparison, fixed in OUT/comparison.json then")
    parser.add_argument("--steps", type=int, help=f"training steps per run (new comparison: {DEFAULT_STEPS})")
    parser.add_argument("--eval-rows", type=int,
                        help=f"held-out rows (data.limit_eval; 500 exist; new comparison: {DEFAULT_EVAL_ROWS})")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS),
                        help="variants to run (their baselines run too); default: all")
    parser.add_argument("--run-seeds", type=int, nargs="+",
                        help="run only these of the comparison's seeds (a share of the work); default: all")
    parser.add_argument("--teacher-adapter", type=Path, help="LoRA adapter folder of the teacher (topd only)")
    parser.add_argument("--threads", type=int, default=0, help="train.py --threads (0 = torch default)")
    parser.add_argument("--tabulate", action="store_true",
                        help="run nothing: write the table from the finished runs (several invocations with "
                             "disjoint --only/--run-seeds can share the work, then one --tabulate)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value for every run (fixed at creation)")
    args = parser.parse_args(argv)
    if args.num_seeds is not None and args.num_seeds < 2:
        parser.error(f"--num-seeds {args.num_seeds}: the interval resamples seeds, it needs at least 2")
    for name in ("steps", "eval_rows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.teacher_adapter is not None and not args.teacher_adapter.is_dir():
        parser.error(f"--teacher-adapter {args.teacher_adapter}: no such folder (a saved LoRA adapter, "
                     "e.g. runs/cpu-demo/final/adapter)")
    if args.teacher_adapter is not None:
        args.teacher_adapter = args.teacher_adapter.resolve()  # train.py runs from the repository root
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = selected_variants(args.only, args.teacher_adapter)
    plan = fixed_plan(args.out, args.num_seeds, args.steps, args.eval_rows, args.overrides)
    seeds = plan["seeds"]
    unknown = sorted(set(args.run_seeds or []) - set(seeds))
    if unknown:
        raise SystemExit(f"--run-seeds {' '.join(map(str, unknown))}: not seeds of {args.out} "
                         f"({' '.join(map(str, seeds))}, fixed in {args.out / PLAN})")
    settings = {**plan, "variants": {n: list(VARIANTS[n].overrides) for n in names},
                "bootstrap": {"resamples": variant_stats.BOOTSTRAP_RESAMPLES, "seed": variant_stats.BOOTSTRAP_SEED},
                "alpha": variant_stats.ALPHA}
    planned = [(n, s, train_args(n, s, plan["steps"], plan["eval_rows"], args.teacher_adapter, plan["overrides"]))
               for n in names for s in seeds]  # variant by variant: each finished one has all its seeds
    results = {(n, s): r for n, s, argv in planned if (r := load_result(args.out / n / f"seed-{s}", argv))}
    failed = []
    summary = summarize(list(results.values()), failed, settings)
    to_run = set(args.run_seeds or seeds)
    for name, seed, argv in planned:
        if (name, seed) in results or seed not in to_run or args.tabulate:
            continue
        result = run_one(name, seed, argv, args.out / name / f"seed-{seed}", args.threads)
        if result is None:
            failed.append((name, seed))
        else:
            results[(name, seed)] = result
        summary = summarize([results[k] for k in sorted(results, key=lambda k: (names.index(k[0]), k[1]))],
                            failed, settings)
        (args.out / "variants.json").write_text(json.dumps(summary, indent=2))
        (args.out / "variants.md").write_text(markdown(summary))
    (args.out / "variants.json").write_text(json.dumps(summary, indent=2))
    (args.out / "variants.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
