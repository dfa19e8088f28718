"""GSM8K accuracy of a model, with and without its trained adapter, by number of few-shot examples.

    # base model and its GRPO adapter, 0/2/4/8 shots, the first 100 test problems
    python evaluate.py --model Qwen/Qwen2.5-0.5B --adapter runs/qwen/adapter --limit 100 --out eval/qwen
    # an instruct model, offline, on the local GSM8K copy
    python evaluate.py --model /tmp/smolhf --style chat --shots 0 8 --limit 50 \
        --data-dir ../shared/data/gsm8k --out eval/smol
    # beside greedy accuracy: pass@k and maj@k for k = 1, 4, 16 from 16 samples per problem at T = 0.7
    python evaluate.py --model Qwen/Qwen2.5-0.5B --limit 100 --samples 16 --k 1 4 16 --temperature 0.7 --out eval/q16
    # one chart from two earlier runs
    python evaluate.py --compare eval/base/results.json eval/trained/results.json --out eval/both

Generation is the trainer's own (`grpo.rollout.generate`: greedy for accuracy, same stop
strings), and scoring uses the training rewards, so a number here means what the reward meant in
training: correct = `gsm8k_correctness` is 1 (a single "#### The final answer is N" line
holding the right number); formatted = `gsm8k_format` is positive.

With --samples N, each problem also gets N sampled completions (problem i draws with a seed made
from --seed and i alone: reproducible whatever the batch, and the same draws for base and trained),
scored the same way, and for each --k:
- pass@k: the chance that k samples hold a correct one, the unbiased estimator of Chen et al. 2021
  from all N samples;
- maj@k: the chance that the majority answer of k samples is correct. Samples vote with the number
  on their answer line ("72", "72.0" and "$72" agree); samples without one do not vote; a tie is
  broken at random (a correct answer tied with t others counts 1 / (t + 1)). Like pass@k it is
  averaged over every k-subset of the N samples, not read off the first k: the same expectation,
  less noise (grpo/algorithm/sampled_accuracy.py).

Writes to --out: results.json (settings, metrics and every completion with its score),
results.md (the table) and accuracy.png (accuracy by shot count, base beside trained; with
samples, pass@k and maj@k against k beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import rewards
from data import SHOT_COUNTS, STOP_STRINGS, STYLES, gsm8k_files, load_task, with_prompts
from grpo.algorithm.sampled_accuracy import majority_at_k, pass_at_k
from grpo.runtime.config import CPU_MATMUL
from grpo.runtime.tracking import MlflowSink, require
from rewards.gsm8k import extract_final_answer, parse_number

logger = logging.getLogger("evaluate")

SPLITS = ("test", "validation")
RESULTS_JSON, RESULTS_MD, CHART_PNG = "results.json", "results.md", "accuracy.png"


def score(completions: list[str], answers: list[str]) -> tuple[list[bool], list[bool]]:
    """(correct, formatted) per completion, by the training rewards."""
    correctness = rewards.get("gsm8k_correctness")(completions, answer=answers)
    formatting = rewards.get("gsm8k_format")(completions)
    return [s is not None and s >= 1.0 for s in correctness], [s > 0 for s in formatting]


def final_answer(completion: str) -> float | None:
    """The number on the completion's single answer line, as the correctness reward reads it; None if none."""
    text = extract_final_answer(completion)
    return None if text is None else parse_number(text)


def problem_seed(seed: int, index: int) -> int:
    """The sampling seed of problem `index` (its position in the split): depends on nothing else."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate_texts(model, tokenizer, prompts: list[str], args: argparse.Namespace, *, group_size: int,
                   temperature: float, desc: str, seeds: list[int] | None = None) -> list[dict]:
    """`group_size` completions per prompt, as dicts {text, tokens, truncated}, in prompt order.

    seeds: one per prompt for sampling (None: greedy, or torch's global generator)."""
    from grpo.rollout import SamplingParams, generate  # the trainer's sampler: same stop handling

    params = SamplingParams(temperature=temperature, top_p=args.top_p if temperature > 0 else 1.0,
                            max_new_tokens=args.max_new_tokens, stop_strings=STOP_STRINGS)
    prompts_per_batch = max(1, args.batch_size // group_size)
    outputs = []
    with tqdm(total=len(prompts), desc=desc, unit="problem") as progress:
        for start in range(0, len(prompts), prompts_per_batch):
            chunk = prompts[start:start + prompts_per_batch]
            # As train.py tokenizes: chat templates already carry their special tokens.
            token_lists = [tokenizer(p, add_special_tokens=args.style == "plain")["input_ids"] for p in chunk]
            chunk_seeds = None if seeds is None else seeds[start:start + prompts_per_batch]
            batch = generate(model, tokenizer, token_lists, group_size=group_size, params=params, seeds=chunk_seeds)
            lengths = batch.completion_mask.sum(1).long().tolist()  # (B,) generated tokens
            outputs += [
                {"text": text, "tokens": n, "truncated": bool(cut)}
                for text, n, cut in zip(batch.texts, lengths, batch.truncated.tolist())
            ]
            progress.update(len(chunk))
    return outputs


def evaluate_setting(model, tokenizer, rows: list[dict], label: str, n_shot: int, args: argparse.Namespace) -> dict:
    """Greedy accuracy of one model at one shot count; with --samples, pass@k and maj@k too."""
    prompted = with_prompts(rows, n_shot, args.style, tokenizer)
    prompts, answers = [row["prompt"] for row in prompted], [row["answer"] for row in prompted]
    started = time.perf_counter()
    greedy = generate_texts(model, tokenizer, prompts, args, group_size=1, temperature=0.0,
                            desc=f"{label} {n_shot}-shot")
    correct, formatted = score([g["text"] for g in greedy], answers)
    n = len(prompted)
    run = {
        "label": label,
        "n_shot": n_shot,
        "n": n,
        "accuracy": sum(correct) / n,
        "format_rate": sum(formatted) / n,
        "mean_completion_tokens": sum(g["tokens"] for g in greedy) / n,
        "truncated_rate": sum(g["truncated"] for g in greedy) / n,
    }
    sampled = [None] * n
    if args.samples:
        sampled_metrics, sampled = evaluate_sampled(model, tokenizer, prompts, answers, args, f"{label} {n_shot}-shot")
        run.update(sampled_metrics)
    run["seconds"] = time.perf_counter() - started
    run["samples"] = [
        {"index": i, "question": row["question"], "answer": row["answer"], "completion": g["text"],
         "correct": ok, "formatted": fmt, "tokens": g["tokens"], "truncated": g["truncated"]}
        | ({"sampled": drawn} if drawn is not None else {})
        for i, (row, g, ok, fmt, drawn) in enumerate(zip(prompted, greedy, correct, formatted, sampled))
    ]
    return run


def evaluate_sampled(model, tokenizer, prompts: list[str], answers: list[str], args: argparse.Namespace,
                     desc: str) -> tuple[dict, list[list[dict]]]:
    """pass@k and maj@k for each --k from --samples completions per problem, and those completions per problem."""
    n = args.samples
    seeds = [problem_seed(args.seed, i) for i in range(len(prompts))]
    drawn = generate_texts(model, tokenizer, prompts, args, group_size=n, temperature=args.temperature,
                           desc=f"{desc} x{n} sampled", seeds=seeds)
    correct, _ = score([d["text"] for d in drawn], [answer for answer in answers for _ in range(n)])
    per_problem = [
        [{"completion": d["text"], "vote": final_answer(d["text"]), "correct": ok, "tokens": d["tokens"],
          "truncated": d["truncated"]}
         for d, ok in zip(drawn[i * n:(i + 1) * n], correct[i * n:(i + 1) * n])]
        for i in range(len(prompts))
    ]
    metrics = {"sampling": {"samples": n, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}}
    for k in args.k:
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(d["correct"] for d in draws), k)
                                              for draws in per_problem]))
    for k in args.k:
        metrics[f"maj@{k}"] = float(np.mean([majority_at_k([d["vote"] for d in draws], [d["correct"] for d in draws], k)
                                             for draws in per_problem]))
    return metrics, per_problem


def metric_ks(run: dict, family: str) -> list[int]:
    """The k of every `{family}@k` metric of a run ("pass" or "maj"), ascending."""
    return sorted(int(key.partition("@")[2]) for key in run if key.startswith(f"{family}@"))


def markdown_table(runs: list[dict]) -> str:
    """One row per (model, shot count): accuracy, format rate, mean length[, sampling, pass@k, maj@k]."""
    sampled_columns = [f"{family}@{k}" for family in ("pass", "maj")
                       for k in sorted({k for run in runs for k in metric_ks(run, family)})]
    sampling = ["samples"] if any("sampling" in run for run in runs) else []
    header = ["model", "shots", "n", "accuracy", "format rate", "mean tokens", "truncated"] + sampling + sampled_columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: (r["label"], r["n_shot"])):
        cells = [run["label"], str(run["n_shot"]), str(run["n"]), f"{run['accuracy']:.1%}",
                 f"{run['format_rate']:.1%}", f"{run['mean_completion_tokens']:.1f}", f"{run['truncated_rate']:.1%}"]
        if sampling:
            drawn = run.get("sampling")
            cells.append(f"{drawn['samples']} at T={drawn['temperature']:g}" if drawn else "")
        cells += [f"{run[key]:.1%}" if key in run else "" for key in sampled_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(runs: list[dict], path: Path, title: str) -> Path:
    """Greedy accuracy (%) by shot count, one bar per model label; where runs sampled, two more panels:
    pass@k and maj@k (%) against k, one line per (model, shot count)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    sampled = [run for run in runs if metric_ks(run, "pass") or metric_ks(run, "maj")]
    shots = sorted({run["n_shot"] for run in runs})
    fig, axes = plt.subplots(1, 3 if sampled else 1, figsize=(1.6 + 1.4 * len(shots) + (9 if sampled else 0), 4),
                             squeeze=False)
    greedy_bars(axes[0, 0], runs, title)
    for ax, family in zip(axes[0, 1:], ("pass", "maj")):
        for run in sampled:
            ks = metric_ks(run, family)
            ax.plot(ks, [100 * run[f"{family}@{k}"] for k in ks], marker="o",
                    label=f"{run['label']} {run['n_shot']}-shot" if ks else None)  # an older file may lack maj@k
        ks = sorted({k for run in sampled for k in metric_ks(run, family)})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (samples)")
        ax.set_ylabel(f"{family}@k (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{family}@k")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def greedy_bars(ax, runs: list[dict], title: str) -> None:
    """Grouped bars on `ax`: greedy accuracy (%) by shot count, one bar per model label."""
    labels = list(dict.fromkeys(run["label"] for run in runs))
    shots = sorted({run["n_shot"] for run in runs})
    accuracy = {(run["label"], run["n_shot"]): 100 * run["accuracy"] for run in runs}
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(shots))]
        heights = [accuracy.get((label, s), 0.0) for s in shots]
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, labels=[f"{h:.0f}%" if (label, s) in accuracy else "" for h, s in zip(heights, shots)],
                     fontsize=8)
    ax.set_xticks(range(len(shots)), [f"{s}-shot" for s in shots])
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_ylim(0, max([*accuracy.values(), 10.0]) * 1.15)
    ax.set_title(title)
    ax.legend()


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """results.json, results.md and accuracy.png under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = result["runs"]
    title = f"GSM8K {result.get('split', '')} accuracy ({runs[0]['n']} problems)"
    paths = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD, "chart": out_dir / CHART_PNG}
    paths["json"].write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(f"# {title}\n\n{markdown_table(runs)}", encoding="utf-8")
    plot_accuracy(runs, paths["chart"], title)
    return paths


def report_to_mlflow(result: dict, paths: dict[str, Path], args: argparse.Namespace) -> None:
    """One MLflow run per evaluation: the settings as params, accuracy per model and shot count as
    metrics, the table (every completion) and the chart as artifacts."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    sink = MlflowSink(args.out, args.experiment, args.out.resolve().name, settings, state={})
    try:
        for run in result["runs"]:
            name = f"{run['label']}/{run['n_shot']}shot"
            sampled = {f"{name}/{family}_at_{k}": run[f"{family}@{k}"]  # MLflow names take no "@"
                       for family in ("pass", "maj") for k in metric_ks(run, family)}
            sink.log_metrics(run["n_shot"], {f"{name}/accuracy": run["accuracy"],
                                             f"{name}/format_rate": run["format_rate"], **sampled})
            samples = run.get("samples") or []
            if samples:
                table = {key: [s[key] for s in samples] for key in ("index", "question", "answer", "completion",
                                                                   "correct")}
                sink.mlflow.log_table(data=table, artifact_file=f"completions/{run['label']}-{run['n_shot']}shot.json")
        sink.log_files(list(paths.values()), None)
    finally:
        sink.close()


def _source_name(path: Path) -> str:
    return path.parent.name if path.stem == RESULTS_JSON.removesuffix(".json") else path.stem


def merge_results(paths: list[Path]) -> dict:
    """Runs from several results.json files; a label found in two files is prefixed with its file's name."""
    loaded = [(path, json.loads(path.read_text(encoding="utf-8"))) for path in paths]
    files_with_label = Counter(label for _, result in loaded for label in {run["label"] for run in result["runs"]})
    runs = [
        {**run, "label": f"{_source_name(path)}/{run['label']}" if files_with_label[run["label"]] > 1 else run["label"]}
        for path, result in loaded
        for run in result["runs"]
    ]
    return {"compared": [str(p) for p in paths], "split": loaded[0][1].get("split", ""), "runs": runs}


def eval_rows(args: argparse.Namespace) -> list[dict]:
    """The first --limit problems of the GSM8K split (local --data-dir, else the hub)."""
    train_file, test_file = gsm8k_files(args.data_dir) if args.data_dir else (None, None)
    # n_shot=0/plain prompts are cheap placeholders; each setting builds its own below.
    splits = load_task("gsm8k", n_shot=0, style="plain", train_file=train_file, test_file=test_file,
                       limit_eval=args.limit, on_bad_row=args.on_bad_row)
    return splits[args.split]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF hub id, local HF folder, .gguf file, or smollm2-135m-demo")
    parser.add_argument("--adapter", type=Path, help="trained PEFT adapter folder: evaluates base, then base+adapter")
    parser.add_argument("--skip-base", action="store_true", help="with --adapter, evaluate only the trained model")
    parser.add_argument("--style", default="plain", choices=STYLES, help="plain for base models, chat for instruct")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 2, 4, 8], choices=SHOT_COUNTS)
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--limit", type=int, help="first N problems of the split (default: all)")
    parser.add_argument("--data-dir", type=Path, help="local GSM8K copy with train.jsonl/test.jsonl (default: hub)")
    parser.add_argument("--on-bad-row", default="error", choices=("error", "skip"))
    parser.add_argument("--batch-size", type=int, default=16,
                        help="completions per generation batch (with --samples: batch-size // samples problems)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto = bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    parser.add_argument("--cpu-matmul", default="auto", choices=CPU_MATMUL,
                        help="float32 products on CPU, as model.cpu_matmul in train.py")
    parser.add_argument("--samples", type=int,
                        help="also sample N completions per problem and report pass@k and maj@k (default: greedy only)")
    parser.add_argument("--k", type=int, nargs="+",
                        help="k for pass@k and maj@k, each 1..--samples (default: the powers of 2 below N, and N)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature for --samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling for --samples")
    parser.add_argument("--seed", type=int, default=0, help="with each problem's index, the seed its samples draw from")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="no evaluation: merge these results.json files into one table and chart")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md, accuracy.png")
    parser.add_argument("--report-to", nargs="*", default=[], choices=("mlflow",),
                        help="also log the table and chart to MLflow (MLFLOW_TRACKING_URI, as train.py)")
    parser.add_argument("--experiment", default="grpo-eval", help="MLflow experiment for --report-to mlflow")
    args = parser.parse_args(argv)
    if args.compare is None and args.model is None:
        parser.error("give --model to evaluate, or --compare RESULTS_JSON ... to merge earlier results")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: must be a positive number of problems")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be positive")
    if args.skip_base and args.adapter is None:
        parser.error("--skip-base needs --adapter (otherwise nothing is evaluated)")
    if args.samples is None:
        if args.k is not None:
            parser.error("--k needs --samples N (the completions pass@k and maj@k are estimated from)")
        return args
    if args.samples < 1:
        parser.error(f"--samples {args.samples}: must be a positive number of completions per problem")
    if args.temperature <= 0:
        parser.error(f"--temperature {args.temperature}: --samples needs sampling, use a value > 0")
    args.k = sorted(set(args.k or [*(2**i for i in range(args.samples.bit_length()) if 2**i < args.samples),
                                   args.samples]))
    if not 1 <= args.k[0] <= args.k[-1] <= args.samples:
        parser.error(f"--k {' '.join(map(str, args.k))}: each k must be in 1..--samples ({args.samples})")
    return args


def run_evaluation(args: argparse.Namespace) -> dict:
    from grpo import speedups
    from grpo.runtime.model import load_model_and_tokenizer

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = ("bfloat16" if device.startswith("cuda") else "float32") if args.dtype == "auto" else args.dtype
    rows = eval_rows(args)
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=device)
    model.eval()
    speedups.apply(model, device, args.cpu_matmul)  # this device's speed-ups, as in training
    runs = []
    if not args.skip_base:
        runs += [evaluate_setting(model, tokenizer, rows, "base", n_shot, args) for n_shot in args.shots]
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter)).eval()
        speedups.apply(model, device, args.cpu_matmul)  # the adapter's layers too
        runs += [evaluate_setting(model, tokenizer, rows, "trained", n_shot, args) for n_shot in args.shots]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "compare"}
    return {**settings, "device": device, "dtype": dtype, "stop_strings": list(STOP_STRINGS),
            "seconds": time.perf_counter() - started, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if "mlflow" in args.report_to:
        require("mlflow")  # before any evaluation: a missing package names its extra
    result = merge_results(args.compare) if args.compare else run_evaluation(args)
    paths = write_report(result, args.out)
    if "mlflow" in args.report_to:
        report_to_mlflow(result, paths, args)
    print(markdown_table(result["runs"]), end="")
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return result


if __name__ == "__main__":
    main()
