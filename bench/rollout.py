"""Rollout alone: tokens/s of this project's `generate` against transformers' `generate`.

    .venv/bin/python -m bench.rollout --rows 64 512 [--max-new-tokens 64] [--device cuda]
        [--workload b] [--sides ours] [--compile]

Same model (the offline demo model, SmolLM2-135M-Instruct, float32 on CPU, bfloat16 on CUDA),
same prompts (workload a's short chat prompts by default, b's GSM8K 8-shot ones with --workload b;
G = 8 completions each, so 64 rows are 8 prompts and 512 rows 64), the same sampling
(temperature 1, top-p 1), completions ending at EOS only. --compile decodes ours through
rollout.compile's compiled step; --sides ours leaves transformers out.
Each side samples once to warm up, then `--repeats` times (default 1); the figure is generated
tokens (up to and including EOS) per second of wall time. transformers gets the prompts repeated
G times, as its `generate` has no shared prompt. Each figure comes with this process's CPU seconds
(all threads), the steadier measure on a CPU shared with other work. Prints a table and writes
JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.workloads import WORKLOADS, load_rows
from grpo import speedups
from grpo.rollout import SamplingParams, generate
from grpo.runtime.model import load_model_and_tokenizer
from grpo.training.prompts import sampling_seed, tokenize_prompts

GROUP = 8


def _timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds over all its threads, fn(*args)). On a shared CPU
    the CPU seconds are the steadier figure: other processes stretch the wall time, not the work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu, out


def ours(model, tokenizer, token_lists, max_new_tokens: int, compiled: bool = False) -> int:
    seeds = [sampling_seed(0, 1, i) for i in range(len(token_lists))]
    batch = generate(model, tokenizer, token_lists, GROUP, SamplingParams(1.0, 1.0, max_new_tokens), seeds,
                     compiled=compiled)
    return int(batch.completion_mask.sum())


def transformers_side(model, tokenizer, token_lists, max_new_tokens: int) -> int:
    from grpo.rollout.batch import left_pad

    ids, mask = left_pad(token_lists, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids, mask = ids.repeat_interleave(GROUP, 0).to(device), mask.repeat_interleave(GROUP, 0).to(device)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    completion = out[:, ids.shape[1]:]
    eos = tokenizer.eos_token_id
    # tokens up to and including the first EOS, as ours counts them
    ended = (completion == eos).int().cumsum(1)
    return int(((ended == 0) | ((ended == 1) & (completion == eos))).sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 512], help="completions per call (x 8 prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="a")
    parser.add_argument("--sides", nargs="+", choices=["ours", "transformers"], default=["ours", "transformers"])
    parser.add_argument("--compile", action="store_true", help="ours through rollout.compile's compiled decode step")
    parser.add_argument("--out", type=Path, default=Path("bench-results/rollout.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-demo", dtype=dtype, device=args.device)
    model.eval()
    speedups.configure(args.device)
    # this device's speed-ups, as in training (transformers runs the same modules); Inductor cannot
    # lower the CPU's oneDNN layers, so the compiled step keeps PyTorch's (as training does)
    speedups.apply(model, args.device, "torch" if args.compile else "auto")
    workload = WORKLOADS[args.workload]
    results = []
    for rows in args.rows:
        prompts = rows // GROUP
        texts = load_rows(workload.__class__(**{**workload.__dict__, "num_prompts": prompts}), tokenizer)
        token_lists = tokenize_prompts(texts, tokenizer, "chat", 2048, "bench")
        sides = {"ours": lambda *a: ours(*a, compiled=args.compile), "transformers": transformers_side}
        for side in args.sides:
            fn = sides[side]
            # warm-up: the compiled step compiles for the measured shape, the eager one for a smaller one
            compiling = args.compile and side == "ours"
            warm = token_lists if compiling else token_lists[: max(1, prompts // 8)]
            fn(model, tokenizer, warm, args.max_new_tokens if compiling else 4)
            for _ in range(args.repeats):
                seconds, cpu, tokens = _timed(fn, model, tokenizer, token_lists, args.max_new_tokens)
                results.append({"side": side, "rows": rows, "seconds": seconds, "cpu_seconds": cpu, "tokens": tokens,
                                "tokens_per_s": tokens / seconds, "tokens_per_cpu_s": tokens / cpu})
                print(f"{side:12s} {rows:4d} rows: {tokens} tokens in {seconds:.1f} s = "
                      f"{tokens / seconds:.1f} tokens/s ({cpu:.1f} CPU s: {tokens / cpu:.1f} tokens per CPU s)",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "dtype": dtype, "threads": args.threads,
                                    "workload": args.workload, "compiled": args.compile,
                                    "max_new_tokens": args.max_new_tokens, "results": results}, indent=2))
    if len(args.sides) < 2:
        return
    print(f"\n{'rows':>5} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6}")
    for rows in args.rows:
        mine = [r["tokens_per_s"] for r in results if r["rows"] == rows and r["side"] == "ours"]
        theirs = [r["tokens_per_s"] for r in results if r["rows"] == rows and r["side"] == "transformers"]
        print(f"{rows:5d} {max(mine):11.1f} {max(theirs):19.1f} {max(mine) / max(theirs):6.2f}")


if __name__ == "__main__":
    main()
