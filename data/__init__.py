"""Datasets and prompts: GSM8K (hub or local JSONL), synthetic arithmetic, multi-hop questions, HumanEval.

The trainer and evaluate.py need only `load_task`, `build_prompt`, `STOP_STRINGS` and
`ANSWER_PREFIX`; see data/tasks.py for the row format.
"""

from data.gsm8k import (
    ANSWER_PREFIX,
    gsm8k_files,
    load_gsm8k_file,
    load_gsm8k_hub,
    normalize_number,
    parse_gsm8k_row,
    strip_calculator_annotations,
)
from data.humaneval import load_humaneval
from data.multihop import generate_multihop
from data.prompts import EXEMPLARS, SHOT_COUNTS, STOP_STRINGS, STYLES, build_prompt, chat_messages
from data.rows import BadRowError, read_jsonl, split_train_validation, write_jsonl
from data.synthetic import generate_synthetic
from data.tasks import TASK_NAMES, load_prepared_jsonl, load_task, with_prompts

__all__ = [
    "ANSWER_PREFIX",
    "EXEMPLARS",
    "SHOT_COUNTS",
    "STOP_STRINGS",
    "STYLES",
    "TASK_NAMES",
    "BadRowError",
    "build_prompt",
    "chat_messages",
    "generate_multihop",
    "generate_synthetic",
    "gsm8k_files",
    "load_gsm8k_file",
    "load_gsm8k_hub",
    "load_humaneval",
    "load_prepared_jsonl",
    "load_task",
    "normalize_number",
    "parse_gsm8k_row",
    "read_jsonl",
    "split_train_validation",
    "strip_calculator_annotations",
    "with_prompts",
    "write_jsonl",
]
