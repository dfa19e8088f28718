"""The benchmark workloads and the settings both sides share (one source of truth for both).

Both sides get the same prompt texts (rendered with the chat template once, here), the same
model folder, G, completion cap, LoRA (r, alpha, modules), beta, sampling temperature and
micro-batch size. Completions end at EOS only (TRL has no stop strings by default), so both
sides stop for the same reason.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    task: str  # data.load_task name
    n_shot: int
    num_prompts: int  # prompts per optimizer step
    group_size: int  # G completions per prompt
    max_new_tokens: int
    micro_batch_prompts: int  # prompts per forward/backward micro-batch (x G completions)


@dataclass(frozen=True)
class Shared:
    """Settings identical on both sides."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_modules: tuple[str, ...] = LORA_MODULES
    beta: float = 0.04
    temperature: float = 1.0
    top_p: float = 1.0
    learning_rate: float = 3e-4
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2


WORKLOADS = {
    "a": Workload("a", "short chat prompts (synthetic arithmetic, 0-shot), 8 prompts x 8, 64 new tokens",
                  "synthetic", 0, 8, 8, 64, 2),
    "b": Workload("b", "GSM8K 8-shot chat prompts, 2 prompts x 8, 128 new tokens",
                  "gsm8k", 8, 2, 8, 128, 1),
}


def gsm8k_dir() -> Path:
    """The local GSM8K copy: $GSM8K_DIR, else shared/ beside the clone (as in CI)."""
    for d in (os.environ.get("GSM8K_DIR"), REPO.parent / "shared/data/gsm8k"):
        if d and (Path(d) / "train.jsonl").is_file() and (Path(d) / "test.jsonl").is_file():
            return Path(d)
    raise FileNotFoundError(
        f"workload b needs GSM8K train.jsonl and test.jsonl: set GSM8K_DIR, or put them in "
        f"{REPO.parent / 'shared/data/gsm8k'}"
    )


def load_rows(w: Workload, tokenizer) -> list[dict]:
    """The workload's prompt rows (`prompt` is the exact model input text, `answer` the gold answer)."""
    import data

    files = {}
    if w.task == "gsm8k":
        d = gsm8k_dir()
        files = {"train_file": d / "train.jsonl", "test_file": d / "test.jsonl"}
    splits = data.load_task(w.task, n_shot=w.n_shot, style="chat", tokenizer=tokenizer,
                            limit_train=w.num_prompts, seed=0, **files)
    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in splits["train"]]


def describe(w: Workload, s: Shared) -> dict:
    return {"workload": asdict(w), "shared": asdict(s)}


def child_parser(description: str) -> argparse.ArgumentParser:
    """The options every side's child process takes (bench/run.py starts them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=Shared().threads)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model weights (the LoRA adapters stay float32)")
    return parser
