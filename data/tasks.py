"""`load_task`: the one entry point the trainer and the evaluator use to get prompted rows.

Every returned row is a new dict with at least `prompt` (the exact model input) and
`answer` (the verifiable final answer, a string); all columns reach the reward functions.

    gsm8k      question/answer/solution/prompt; "train" and "validation" are a seeded 90/10
               split of the train split minus the few-shot exemplars; "test" is the test split.
               Local JSONL files when train_file and test_file are given, else the hub (openai/gsm8k).
    synthetic  the arithmetic generator (difficulty 1-3), split the same way; no "test".
               Few-shot prompts use the same GSM8K exemplars (they teach the answer format).
    multihop   knowledge-graph random-walk questions (data/multihop.py), split the same way; no
               "test". Zero-shot only (n_shot=0): the exemplars teach GSM8K's answer line, and the
               prompt carries the task's own instruction (`Final answer: NAME`).
    jsonl      rows already prepared (e.g. by `python -m data.prepare`) with `prompt` (or, for an
               environment's rows, a list of chat messages and the environment's fields) and
               `answer`; validation from validation_file, else split off train_file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from data.gsm8k import load_gsm8k_file, load_gsm8k_hub
from data.multihop import ANSWER_INSTRUCTION as MULTIHOP_INSTRUCTION
from data.multihop import generate_multihop
from data.prompts import EXEMPLAR_QUESTIONS, build_prompt, check_prompt_args
from data.rows import RowProblem, check_bad_row_policy, parse_rows, read_jsonl_numbered, split_train_validation
from data.synthetic import generate_synthetic

logger = logging.getLogger(__name__)

TASK_NAMES = ("gsm8k", "synthetic", "multihop", "jsonl")


def with_prompts(
    rows: list[dict], n_shot: int, style: str, tokenizer=None, instruction: str | None = None
) -> list[dict]:
    """New rows with a `prompt` built from each row's `question` (instruction: see `build_prompt`)."""
    return [{**row, "prompt": build_prompt(row["question"], n_shot, style, tokenizer, instruction)} for row in rows]


def drop_exemplars(rows: list[dict]) -> list[dict]:
    """Rows whose question is not one of the few-shot exemplars (a model must not train on its prompt)."""
    kept = [row for row in rows if row["question"] not in EXEMPLAR_QUESTIONS]
    logger.info("dropped %d few-shot exemplar row(s) from the training rows", len(rows) - len(kept))
    return kept


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r} must be a positive integer or None (no limit)")


def _parse_prepared_row(raw: dict) -> dict:
    prompt = raw.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        return raw  # chat messages: an environment's row (its environment scores it; an answer is optional)
    if not isinstance(prompt, str) or not prompt:
        raise RowProblem("missing or empty field 'prompt' (a prepared row needs the model input: text, or a list of "
                         "chat messages for an environment)")
    answer = raw.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
        raise RowProblem(f"field 'answer' must be a non-empty string or number, got {answer!r}")
    return {**raw, "answer": str(answer)}


def load_prepared_jsonl(path: str | Path, on_bad_row: str = "error") -> list[dict]:
    """Rows of a prepared JSONL file; each must have `prompt` and `answer`."""
    numbered = read_jsonl_numbered(path, on_bad_row)
    return [row for _, row in parse_rows(numbered, _parse_prepared_row, str(path), on_bad_row)]


def _gsm8k_splits(train_file, test_file, on_bad_row: str) -> tuple[list[dict], list[dict]]:
    if train_file is None and test_file is None:
        return load_gsm8k_hub("train", on_bad_row), load_gsm8k_hub("test", on_bad_row)
    if train_file is None or test_file is None:
        raise ValueError(
            f"gsm8k from local files needs both train_file and test_file (got train_file={train_file!r}, "
            f"test_file={test_file!r}); give both, or neither to load openai/gsm8k from the hub"
        )
    return load_gsm8k_file(train_file, on_bad_row), load_gsm8k_file(test_file, on_bad_row)


def load_task(
    name: str,
    *,
    n_shot: int,
    style: str,
    tokenizer=None,
    train_file: str | Path | None = None,
    test_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    on_bad_row: str = "error",
    difficulty: int = 1,
    num_synthetic: int = 5000,
    multihop_hops: int = 2,
    num_multihop: int = 2000,
    multihop_entities: int = 1000,
    multihop_passages: int = 8,
    multihop_context_chars: int | None = None,
) -> dict[str, list[dict]]:
    """Splits of task `name` as {"train", "validation"[, "test"]} -> rows.

    n_shot / style / tokenizer: how prompts are built (see `data.prompts.build_prompt`);
        unused for "jsonl", whose rows carry their prompt.
    val_fraction, seed: the held-out share of the train rows and the shuffle seed
        (also the generator seed for "synthetic").
    limit_train / limit_eval: keep the first N rows of train / of validation and test.
    on_bad_row: "error" (raise BadRowError naming file and line) or "skip" (log and drop).
    difficulty, num_synthetic: the generator's level (1-3) and how many problems it makes.
    multihop_hops, num_multihop, multihop_entities, multihop_passages, multihop_context_chars: the multihop
        generator's walk length, question count, graph size, passages per context and optional
        character bound on the context (see `data.multihop.generate_multihop`).
    """
    if name not in TASK_NAMES:
        raise ValueError(f"task {name!r} is not one of {TASK_NAMES}")
    check_bad_row_policy(on_bad_row)
    _check_limit("limit_train", limit_train)
    _check_limit("limit_eval", limit_eval)
    if name != "jsonl":
        check_prompt_args(n_shot, style, tokenizer)
    if name == "multihop" and n_shot != 0:
        raise ValueError(
            f"task 'multihop' takes n_shot=0 only, got n_shot={n_shot}: the few-shot exemplars are GSM8K "
            "arithmetic ending in '#### The final answer is N' and would teach the wrong answer format; "
            "set n_shot=0 (data.n_shot=0), the prompt's instruction asks for 'Final answer: NAME'"
        )

    test = None
    if name == "gsm8k":
        train_rows, test = _gsm8k_splits(train_file, test_file, on_bad_row)
        train, validation = split_train_validation(drop_exemplars(train_rows), val_fraction, seed)
    elif name == "synthetic":
        rows = generate_synthetic(num_synthetic, difficulty=difficulty, seed=seed)
        train, validation = split_train_validation(rows, val_fraction, seed)
    elif name == "multihop":
        rows = generate_multihop(num_multihop, hops=multihop_hops, num_entities=multihop_entities,
                                 num_passages=multihop_passages, max_context_chars=multihop_context_chars, seed=seed)
        train, validation = split_train_validation(rows, val_fraction, seed)
    else:
        if train_file is None:
            raise ValueError("task 'jsonl' needs train_file: a JSONL of rows with 'prompt' and 'answer'")
        train = load_prepared_jsonl(train_file, on_bad_row)
        if validation_file is None:
            train, validation = split_train_validation(train, val_fraction, seed)
        else:
            validation = load_prepared_jsonl(validation_file, on_bad_row)
        if test_file is not None:
            test = load_prepared_jsonl(test_file, on_bad_row)

    splits = {"train": train[:limit_train], "validation": validation[:limit_eval]}
    if test is not None:
        splits["test"] = test[:limit_eval]
    if name != "jsonl":
        instruction = MULTIHOP_INSTRUCTION if name == "multihop" else None
        splits = {split: with_prompts(rows, n_shot, style, tokenizer, instruction) for split, rows in splits.items()}
    logger.info("task %s: %s", name, {split: len(rows) for split, rows in splits.items()})
    return splits
