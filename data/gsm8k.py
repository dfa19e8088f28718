"""GSM8K: parse raw rows into question / final answer / worked solution, from files or the hub.

A raw GSM8K row is `{"question": ..., "answer": "worked solution with <<48/2=24>> calculator
annotations\\n#### 72"}`. The prepared row keeps the question, puts the normalized final
answer in `answer` (a string, e.g. "1080" from "1,080") and the cleaned worked solution,
ending with "#### The final answer is 1080", in `solution`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from data.rows import RowProblem, parse_rows, read_jsonl_numbered

ANSWER_PREFIX = "#### The final answer is"
HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"

_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's `<<48/2=24>>` calculator annotations, keeping the visible result."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def normalize_number(text: str) -> str:
    """Canonical string of a final answer: "1,080" -> "1080", "$5.50" -> "5.5", "3.0" -> "3".

    Commas, `$` and whitespace are dropped; what is left must be a plain decimal number,
    else ValueError. Integral values are written without a decimal point.
    """
    cleaned = re.sub(r"[,$\s]", "", text)
    if not _NUMBER.fullmatch(cleaned):
        raise ValueError(f"final answer {text!r} is not a number")
    value = Decimal(cleaned)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def parse_gsm8k_row(raw: object) -> dict:
    """Raw GSM8K row -> {"question", "answer", "solution"}; raises RowProblem with the reason."""
    if not isinstance(raw, dict):
        raise RowProblem(f"expected an object with 'question' and 'answer', got {type(raw).__name__}")
    for field in ("question", "answer"):
        if not isinstance(raw.get(field), str) or not raw[field].strip():
            raise RowProblem(f"missing or empty field {field!r}")
    n_markers = raw["answer"].count("####")
    if n_markers != 1:
        raise RowProblem(f"expected exactly one '####' before the final answer, found {n_markers}")
    worked, _, final = raw["answer"].partition("####")
    try:
        answer = normalize_number(final.strip())
    except ValueError as err:
        raise RowProblem(str(err)) from err
    steps = strip_calculator_annotations(worked).strip()
    solution = f"{steps}\n{ANSWER_PREFIX} {answer}" if steps else f"{ANSWER_PREFIX} {answer}"
    return {"question": raw["question"].strip(), "answer": answer, "solution": solution}


def load_gsm8k_file(path: str | Path, on_bad_row: str = "error") -> list[dict]:
    """Parse a local GSM8K-format JSONL file (bad rows per `on_bad_row`)."""
    numbered = read_jsonl_numbered(path, on_bad_row)
    return [row for _, row in parse_rows(numbered, parse_gsm8k_row, str(path), on_bad_row)]


def load_gsm8k_hub(split: str, on_bad_row: str = "error") -> list[dict]:
    """Parse one split of `openai/gsm8k` ("main") from the Hugging Face hub (needs network)."""
    import datasets  # deferred: importing datasets costs ~1 s and most callers use local files

    table = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    numbered = ((i, dict(raw)) for i, raw in enumerate(table, start=1))
    return [row for _, row in parse_rows(numbered, parse_gsm8k_row, f"{HUB_ID}:{split}", on_bad_row)]


def gsm8k_files(data_dir: str | Path) -> tuple[Path, Path]:
    """The train.jsonl / test.jsonl pair of a local GSM8K copy; errors name what is missing."""
    data_dir = Path(data_dir)
    train, test = data_dir / "train.jsonl", data_dir / "test.jsonl"
    missing = [str(p) for p in (train, test) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"GSM8K data dir {data_dir} lacks {missing}; it needs train.jsonl and test.jsonl")
    return train, test
