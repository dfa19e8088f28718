"""Multi-turn decoding against single-turn decoding of the same tokens: `python -m bench.agent`.

    .venv/bin/python -m bench.agent [--rows 16] [--turns 3] [--turn-tokens 48] [--tool-tokens 40]

The agent rollout (grpo/rollout/agent.py) decodes turn by turn: each turn is one batched `generate` over
every running row, whose prompt is the row's whole conversation so far (the previous turns' sampled ids and
the tool results' ids). This times that pattern on the demo model (SmolLM2-135M-Instruct, float32 on CPU,
2 threads): `--rows` episodes of `--turns` turns, each turn `--turn-tokens` sampled tokens (EOS ignored, so
every turn does the same work) followed by `--tool-tokens` ids of a tool result; the tools themselves take
no time here (the rollout runs them between turns, outside the decode). Against it: one `generate` of the
same rows sampling turns x turn-tokens tokens each. Both report sampled tokens per second of wall time and
the process's peak resident memory; the ratio is multi-turn over single-turn.

Why the multi-turn side is slower: each later turn encodes every row's previous turn and tool result (one
prompt pass per turn on the context carried from the turn before, grpo/rollout/agent.py), and after the
first turn the rows no longer share their group's prompt. For comparison it also times the same turns with
each row's whole conversation encoded again every turn (no context carried).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from bench.workloads import WORKLOADS, load_rows
from grpo import speedups
from grpo.rollout import SamplingParams, generate
from grpo.rollout.generation import generate_turn
from grpo.rollout.agent import turn_seed
from grpo.runtime.model import load_model_and_tokenizer
from grpo.training.prompts import sampling_seed, tokenize_prompts

GROUP = 8


def _seconds(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def single_turn(model, tokenizer, prompts, turns: int, turn_tokens: int) -> tuple[float, int]:
    params = SamplingParams(1.0, 1.0, turns * turn_tokens, (), ignore_eos=True)
    seeds = [sampling_seed(0, 1, i) for i in range(len(prompts))]
    seconds, batch = _seconds(lambda: generate(model, tokenizer, prompts, GROUP, params, seeds))
    return seconds, int(batch.completion_mask.sum())


def multi_turn(model, tokenizer, prompts, turns: int, turn_tokens: int, tool_ids: list[int],
               carry: bool = True) -> tuple[float, int]:
    """The agent rollout's decode pattern: turn 1 shares each group's prompt; each later turn encodes every
    row's previous turn and a tool result on the context carried from the turn before (carry=False: encodes
    each row's whole conversation again) and decodes from there."""
    params = SamplingParams(1.0, 1.0, turn_tokens, (), ignore_eos=True)
    seeds = [sampling_seed(0, 1, i) for i in range(len(prompts))]
    rows = len(prompts) * GROUP
    contexts, sampled, seconds = None, 0, 0.0
    for turn in range(turns):
        if turn == 0:
            spent, (batch, context) = _seconds(lambda: generate_turn(model, tokenizer, prompts, GROUP, params, seeds))
            contexts, carried = [list(prompts[r // GROUP]) for r in range(rows)], torch.arange(rows) // GROUP
        else:
            turn_seeds = [turn_seed(seeds[r // GROUP], r % GROUP, turn) for r in range(rows)]
            if carry:
                spent, (batch, context) = _seconds(lambda: generate_turn(
                    model, tokenizer, new, 1, params, turn_seeds, context=context.rows(carried)))
                carried = torch.arange(rows)
            else:
                spent, (batch, context) = _seconds(lambda: generate_turn(model, tokenizer, contexts, 1, params,
                                                                         turn_seeds))
        seconds += spent
        sampled += int(batch.completion_mask.sum())
        new = [row[:turn_tokens] + tool_ids for row in batch.completion_ids.tolist()]
        contexts = [c + n for c, n in zip(contexts, new)]
    return seconds, sampled


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="episodes (a multiple of 8: G = 8 per prompt)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--turn-tokens", type=int, default=48)
    parser.add_argument("--tool-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/agent.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-demo", dtype="float32")
    speedups.apply(model.eval(), "cpu")
    rows = load_rows(WORKLOADS["a"], tokenizer)[: args.rows // GROUP]
    prompts = tokenize_prompts(rows, tokenizer, "chat", 2048, "bench")
    tool_ids = tokenizer.encode(" ".join(["result"] * args.tool_tokens), add_special_tokens=False)[: args.tool_tokens]
    with torch.no_grad():
        single_turn(model, tokenizer, prompts, 1, 4)  # warm-up
        single = single_turn(model, tokenizer, prompts, args.turns, args.turn_tokens)
        multi = multi_turn(model, tokenizer, prompts, args.turns, args.turn_tokens, tool_ids)
        again = multi_turn(model, tokenizer, prompts, args.turns, args.turn_tokens, tool_ids, carry=False)
    report = {
        "rows": args.rows, "turns": args.turns, "turn_tokens": args.turn_tokens, "tool_tokens": len(tool_ids),
        "single_turn": {"seconds": single[0], "sampled_tokens": single[1], "tokens_per_s": single[1] / single[0]},
        "multi_turn": {"seconds": multi[0], "sampled_tokens": multi[1], "tokens_per_s": multi[1] / multi[0]},
        "multi_turn_encoding_each_conversation_again": {"seconds": again[0], "sampled_tokens": again[1],
                                                        "tokens_per_s": again[1] / again[0]},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": args.threads,
    }
    report["multi_over_single_seconds"] = multi[0] / single[0]
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
