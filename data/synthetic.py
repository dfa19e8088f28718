"""Verifiable synthetic arithmetic word problems, for the offline demo and the tests.

Rows have GSM8K's prepared shape: `question`, `answer` (the number as a string) and a
worked `solution` ending with "#### The final answer is N". The difficulty knob:

    1: one step, addition or subtraction of numbers up to 20
    2: two steps, addition and subtraction of numbers up to 50
    3: a multiplication (boxes x items per box) followed by an addition or subtraction

Generation is deterministic from the seed, and questions are distinct; every level yields
tens of thousands of distinct problems. Answers are never negative.
"""

from __future__ import annotations

import random

from data.gsm8k import ANSWER_PREFIX

DIFFICULTIES = (1, 2, 3)
PEOPLE = (
    ("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Emma", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hiro", "he"), ("Isla", "she"), ("Jonas", "he"), ("Keiko", "she"), ("Liam", "he"),
)
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards", "coins")


def _one_step(rng: random.Random, name: str, pronoun: str, item: str) -> tuple[str, list[str], int]:
    if rng.random() < 0.5:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        question = f"{name} has {a} {item}. {pronoun.capitalize()} gets {b} more {item}. How many {item} does {name} have now?"
        return question, [f"{name} has {a} + {b} = {a + b} {item} now."], a + b
    a = rng.randint(2, 20)
    b = rng.randint(1, a - 1)
    question = f"{name} has {a} {item}. {pronoun.capitalize()} gives {b} {item} to a friend. How many {item} does {name} have left?"
    return question, [f"{name} has {a} - {b} = {a - b} {item} left."], a - b


def _two_steps(rng: random.Random, name: str, pronoun: str, item: str) -> tuple[str, list[str], int]:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    c = rng.randint(1, a + b)
    question = (
        f"{name} has {a} {item}. On Monday {pronoun} buys {b} more {item}. "
        f"On Tuesday {pronoun} gives away {c} {item}. How many {item} does {name} have now?"
    )
    steps = [
        f"After Monday, {name} has {a} + {b} = {a + b} {item}.",
        f"After Tuesday, {name} has {a + b} - {c} = {a + b - c} {item}.",
    ]
    return question, steps, a + b - c


def _with_multiplication(rng: random.Random, name: str, pronoun: str, item: str) -> tuple[str, list[str], int]:
    boxes, per_box = rng.randint(2, 9), rng.randint(2, 12)
    total = boxes * per_box
    opening = f"{name} buys {boxes} boxes of {item} with {per_box} {item} in each box."
    first = f"The boxes hold {boxes} * {per_box} = {total} {item}."
    if rng.random() < 0.5:
        extra = rng.randint(1, 30)
        question = f"{opening} {pronoun.capitalize()} already had {extra} {item}. How many {item} does {name} have now?"
        return question, [first, f"{name} has {total} + {extra} = {total + extra} {item} now."], total + extra
    given = rng.randint(1, total)
    question = f"{opening} {pronoun.capitalize()} gives away {given} {item}. How many {item} does {name} have left?"
    return question, [first, f"{name} has {total} - {given} = {total - given} {item} left."], total - given


_MAKERS = {1: _one_step, 2: _two_steps, 3: _with_multiplication}


def generate_synthetic(n: int, difficulty: int = 1, seed: int = 0) -> list[dict]:
    """`n` distinct problems at `difficulty`, each {"question", "answer", "solution"}."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={difficulty!r} is not one of {DIFFICULTIES}")
    if n < 0:
        raise ValueError(f"n={n} problems: must be >= 0")
    rng = random.Random(seed)
    make = _MAKERS[difficulty]
    rows, seen = [], set()
    max_draws = 50 * n + 100  # duplicates are rare; the cap only guards an impossible n
    for _ in range(max_draws):
        if len(rows) == n:
            break
        name, pronoun = rng.choice(PEOPLE)
        question, steps, answer = make(rng, name, pronoun, rng.choice(ITEMS))
        if question in seen:
            continue
        seen.add(question)
        solution = "\n".join(steps + [f"{ANSWER_PREFIX} {answer}"])
        rows.append({"question": question, "answer": str(answer), "solution": solution})
    if len(rows) < n:
        raise ValueError(f"could only make {len(rows)} distinct problems at difficulty {difficulty}, asked for {n}")
    return rows
