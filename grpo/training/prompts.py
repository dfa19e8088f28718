"""The prompts of a run: loading and tokenizing the rows, and which rows each step and rank samples.

The data order and the sampling seeds are functions of (seed, step, position), not of any
state, so resuming at step k draws exactly the prompts an uninterrupted run would, on any
number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def draw(self, step: int, per_step: int, seed: int, world: World) -> tuple["PromptSet", list[int]]:
        """This rank's share of step `step`'s `per_step` prompts and their sampling seeds."""
        indices, seeds = rank_prompts(len(self), step, per_step, seed, world)
        return self.subset(indices), seeds


@dataclass(frozen=True)
class LeveledRows:
    """Rows made at each step at a curriculum's levels (RLVE): the e-commerce gym's episodes, reasoning-gym's
    problems. Global position p of step s holds the curriculum key `key_of(p, s)` (an environment or a
    dataset) at the level the curriculum draws for (s, p), made by `make(key, level, seed)` from a seed of
    (seed, step, p): the same rows on any number of ranks, and after a resume."""

    make: Callable[[str, int, int], dict]
    keys: tuple[str, ...]
    weights: tuple[float, ...] | None  # None: key p % len(keys); else a weighted draw hashed from (seed, step, p)
    curriculum: object | None  # grpo.environments.Curriculum, or None: every row at `level`
    level: int
    tokenize: Callable[[list[dict]], list[list[int]]] | None  # None: rows tokenized at the episode's start

    def __len__(self) -> int:
        return 0  # no fixed size: train.max_steps sets the run's length

    def key_of(self, position: int, step: int, seed: int) -> str:
        if self.weights is None:
            return self.keys[position % len(self.keys)]
        pick = np.random.default_rng([seed, step, position, 7]).random() * sum(self.weights)
        return self.keys[min(int(np.searchsorted(np.cumsum(self.weights), pick, side="right")), len(self.keys) - 1)]

    def draw(self, step: int, per_step: int, seed: int, world: World) -> tuple[PromptSet, list[int]]:
        positions = rank_share(per_step, world)
        rows = []
        for p in positions:
            key = self.key_of(p, step, seed)
            level = self.curriculum.sample_level(key, step, p) if self.curriculum is not None else self.level
            rows.append({**self.make(key, level, sampling_seed(seed, step, p)), "curriculum_key": key, "level": level})
        tokens = self.tokenize(rows) if self.tokenize is not None else [[] for _ in rows]
        return PromptSet(rows, tokens), [sampling_seed(seed, step, p) for p in positions]


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


def load_prompt_sets(cfg: Config, tokenizer, curriculum=None) -> tuple[PromptSet | LeveledRows, PromptSet]:
    """(training prompts, held-out prompts), tokenized, each prompt leaving room for a completion.

    The e-commerce gym's and reasoning-gym's training rows are made at each step (LeveledRows, at the
    curriculum's levels when there is one); an environment's rows are tokenized when their episode starts
    (the chat template renders its tools and its reset observation)."""
    d, max_prompt, style = cfg.data, cfg.train.max_seq_length - cfg.rollout.max_new_tokens, cfg.data.prompt_style
    eval_seed = cfg.train.seed + 1_000_003  # held-out rows from another seed than any training row's
    if d.task == "ecom":
        from grpo.environments.ecom import ecom_rows

        names = tuple(d.ecom_environments)
        train = LeveledRows(lambda key, level, seed: ecom_rows([key], 1, seed, level)[0], names, None, curriculum,
                            cfg.env.curriculum_start_level, None)
        held_out = ecom_rows(list(names), d.limit_eval or 32, eval_seed, d.ecom_eval_level)
        return train, PromptSet(held_out, [[] for _ in held_out])
    if d.task == "reasoning_gym":
        from data.reasoning_gym_task import load_reasoning_gym_rows

        def tokenize(rows):
            return tokenize_prompts(rows, tokenizer, style, max_prompt, "train")

        names, weights = tuple(d.reasoning_gym_datasets), tuple(d.reasoning_gym_weights) or None
        train = LeveledRows(lambda key, level, seed: load_reasoning_gym_rows([key], None, 1, seed, level, style=style,
                                                                            tokenizer=tokenizer)[0],
                            names, weights or tuple(1.0 for _ in names), curriculum, cfg.env.curriculum_start_level,
                            tokenize)
        held_out = load_reasoning_gym_rows(list(names), list(weights) if weights else None, d.limit_eval or 64,
                                           eval_seed, cfg.env.curriculum_start_level, style=style, tokenizer=tokenizer)
        return train, PromptSet(held_out, tokenize_prompts(held_out, tokenizer, style, max_prompt, "eval"))
    train_rows, eval_rows = load_rows(cfg, tokenizer)
    if cfg.env.active:
        return PromptSet(train_rows, [[] for _ in train_rows]), PromptSet(eval_rows, [[] for _ in eval_rows])
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
