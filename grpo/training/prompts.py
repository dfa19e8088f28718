"""The prompts of a run: loading and tokenizing the rows, and which rows each step and rank samples.

The data order and the sampling seeds are functions of (seed, step, position), not of any
state, so resuming at step k draws exactly the prompts an uninterrupted run would, on any
number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import data
from grpo.runtime.config import Config, ConfigError
from grpo.runtime.distributed import World, rank_share


@dataclass(frozen=True)
class PromptSet:
    """Rows (dicts with `prompt`, `answer` and any other columns) and their prompt token ids."""

    rows: list[dict]
    tokens: list[list[int]]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices) -> "PromptSet":
        return PromptSet([self.rows[i] for i in indices], [self.tokens[i] for i in indices])


def load_rows(cfg: Config, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows of data.eval_split)."""
    d = cfg.data
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(d, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"data.{key}={path!r}: no such file")
    splits = data.load_task(
        d.task, n_shot=d.n_shot, style=d.prompt_style, tokenizer=tokenizer,
        train_file=d.train_file, validation_file=d.validation_file, test_file=d.test_file,
        val_fraction=d.val_fraction, seed=cfg.train.seed, limit_train=d.limit_train,
        limit_eval=d.limit_eval, on_bad_row=d.on_bad_row, difficulty=d.difficulty,
        num_synthetic=d.num_synthetic, multihop_hops=d.multihop_hops, num_multihop=d.num_multihop,
        multihop_entities=d.multihop_entities, multihop_passages=d.multihop_passages,
        multihop_context_chars=d.multihop_context_chars,
    )
    if not splits["train"]:
        raise ConfigError(f"data.task={d.task!r} produced no training rows; check data.train_file")
    return splits["train"], splits.get(d.eval_split) or []


def tokenize_prompts(rows: list[dict], tokenizer, style: str, max_prompt_tokens: int, split: str):
    """Token ids of each row's prompt; a prompt that leaves no room for the completion is an error."""
    add_special = style == "plain"  # chat templates already carry their special tokens
    ids = [tokenizer(r["prompt"], add_special_tokens=add_special)["input_ids"] for r in rows]
    too_long = [i for i, t in enumerate(ids) if len(t) > max_prompt_tokens]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} {split} prompt(s) exceed {max_prompt_tokens} tokens (row {too_long[0]} "
            f"has {len(ids[too_long[0]])}); raise train.max_seq_length or lower data.n_shot / "
            "rollout.max_new_tokens"
        )
    return ids


def load_prompt_sets(cfg: Config, tokenizer) -> tuple[PromptSet, PromptSet]:
    """(training prompts, held-out prompts), tokenized, each prompt leaving room for a completion."""
    train_rows, eval_rows = load_rows(cfg, tokenizer)
    max_prompt = cfg.train.max_seq_length - cfg.rollout.max_new_tokens
    style = cfg.data.prompt_style
    return (PromptSet(train_rows, tokenize_prompts(train_rows, tokenizer, style, max_prompt, "train")),
            PromptSet(eval_rows, tokenize_prompts(eval_rows, tokenizer, style, max_prompt, "eval")))


def prompt_indices(num_rows: int, step: int, per_step: int, seed: int) -> list[int]:
    """Rows for rollout `step` (1-based): consecutive positions of a per-epoch shuffled order."""
    out = []
    for position in range((step - 1) * per_step, step * per_step):
        epoch, offset = divmod(position, num_rows)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


def sampling_seed(seed: int, step: int, position: int) -> int:
    """The sampling seed of the prompt at `position` in step `step`'s list: the same on any rank."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


def rank_prompts(num_rows: int, step: int, per_step: int, seed: int, world: World):
    """This rank's share of the step's `per_step` prompts, as (row indices, sampling seeds)."""
    indices = prompt_indices(num_rows, step, per_step, seed)
    positions = rank_share(per_step, world)
    return [indices[p] for p in positions], [sampling_seed(seed, step, p) for p in positions]
