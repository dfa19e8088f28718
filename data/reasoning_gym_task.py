"""reasoning-gym (the PyPI package `reasoning-gym`) as a task source: procedural problems, offline, seeded.

`load_reasoning_gym_rows(names, weights, count, seed, level)` draws `count` rows, each from one of the
named datasets picked with probability proportional to its weight. A row is

    {"prompt", "question", "answer", "metadata", "rg_dataset", "level"}

`metadata` is the dataset entry's own (its `source_dataset` names the dataset), which the
`reasoning_gym` reward hands back to that dataset's answer checker.

Difficulty: a level L sets every attribute of the dataset's reasoning-gym curriculum (its
`create_curriculum(name)`) to level min(L, that attribute's top), and the configuration is generated
the way reasoning-gym's own curriculum does by default (RangeAttributeMode.INCLUSIVE: an attribute at
level L spans the values of levels 0..L, so a higher level adds harder problems to the mix). Datasets
without a curriculum (acre, composite, gsm_symbolic, list_functions in 0.1.25) take level 0 only.
`max_level(name)` is the level past which nothing gets harder.
"""

from __future__ import annotations

import difflib
import hashlib
import random
from collections import Counter
from collections.abc import Sequence

from data.prompts import build_prompt

INSTRUCTION = (
    "Solve the problem. Think step by step if needed, then give only the final answer between "
    "<answer> and </answer> tags, e.g. <answer>42</answer>."
)


def _registry():
    from reasoning_gym.factory import CURRICULA, DATASETS

    return DATASETS, CURRICULA


def check_dataset(name: str) -> None:
    datasets, _ = _registry()
    if name not in datasets:
        close = difflib.get_close_matches(name, datasets, n=3)
        raise ValueError(f"reasoning-gym has no dataset {name!r}" + (f"; did you mean one of {close}?" if close else
                         f"; its datasets: {', '.join(sorted(datasets))}"))


def max_level(name: str) -> int:
    """The highest level that changes `name`'s configuration (0 for a dataset without a curriculum)."""
    check_dataset(name)
    _, curricula = _registry()
    if name not in curricula:
        return 0
    from reasoning_gym.factory import create_curriculum

    return max(len(attribute.levels) for attribute in create_curriculum(name).attributes.values()) - 1


def dataset_config(name: str, level: int, seed: int, size: int):
    """reasoning-gym's configuration of `name` at `level` (see the module docstring), with `seed` and `size`."""
    check_dataset(name)
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level={level!r} must be a non-negative integer")
    datasets, curricula = _registry()
    if name not in curricula:
        if level:
            raise ValueError(f"reasoning-gym's {name!r} has no difficulty curriculum; use level 0 or another dataset")
        return datasets[name][1](seed=seed, size=size)
    from reasoning_gym.factory import create_curriculum

    curriculum = create_curriculum(name)
    for attribute, definition in curriculum.attributes.items():
        curriculum.set_attr_level(attribute, min(level, len(definition.levels) - 1))
    return curriculum.generate_configuration({"seed": seed, "size": size})


def _seed(seed: int, name: str, level: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{level}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def load_reasoning_gym_rows(names: Sequence[str], weights: Sequence[float] | None, count: int, seed: int,
                            level: int = 0, *, style: str = "chat", tokenizer=None) -> list[dict]:
    """`count` rows from the named reasoning-gym datasets (see the module docstring).

    weights: one non-negative number per name (None: equal); style / tokenizer: how the prompt is built
    (`data.prompts.build_prompt`, zero-shot, with INSTRUCTION). The same arguments give the same rows."""
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names={list(names)!r} must name one or more distinct reasoning-gym datasets")
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names) or any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights={weights!r} must be one non-negative number per dataset in {list(names)}, "
                         f"not all zero")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} must be a positive integer")
    for name in names:
        check_dataset(name)
    picks = random.Random(f"reasoning_gym/{seed}/{level}").choices(list(names), weights=weights, k=count)
    datasets, _ = _registry()
    entries = {}
    for name, needed in Counter(picks).items():
        dataset = datasets[name][0](config=dataset_config(name, level, _seed(seed, name, level), needed))
        entries[name] = [dataset[i] for i in range(needed)]
    taken = Counter()
    rows = []
    for name in picks:
        entry = entries[name][taken[name]]
        taken[name] += 1
        rows.append({
            "prompt": build_prompt(entry["question"], 0, style, tokenizer, INSTRUCTION),
            "question": entry["question"], "answer": entry["answer"], "metadata": entry["metadata"],
            "rg_dataset": name, "level": level,
        })
    return rows
