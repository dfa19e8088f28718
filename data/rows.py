"""Rows as plain dicts: JSONL reading/writing, the bad-row policy, the train/validation split.

A "bad row" is a line the loader cannot turn into a usable example (not UTF-8, over 1 MB, not a
JSON object, a missing or empty field, an answer that does not parse). It is never silently kept:
with on_bad_row="error"
the first one raises `BadRowError` naming the file and line; with on_bad_row="skip" each
one is logged with its line number and the total is logged at the end.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

BAD_ROW_POLICIES = ("error", "skip")


class BadRowError(ValueError):
    """A row that cannot be used, located by source (file or hub split) and 1-based line."""

    def __init__(self, source: str, line: int, reason: str):
        self.source, self.line, self.reason = source, line, reason
        super().__init__(
            f"{source}, line {line}: {reason}. Fix or remove the row, "
            f"or pass on_bad_row='skip' to drop bad rows (each one is logged)."
        )


class RowProblem(ValueError):
    """Raised by a row parser with a short reason; `parse_rows` turns it into a BadRowError."""


def check_bad_row_policy(on_bad_row: str) -> None:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row={on_bad_row!r} is not one of {BAD_ROW_POLICIES}")


def parse_rows(
    numbered: Iterable[tuple[int, object]],
    parse_row: Callable[[object], dict],
    source: str,
    on_bad_row: str,
) -> list[tuple[int, dict]]:
    """Apply `parse_row` to each (line, raw) pair under the bad-row policy.

    Returns (line, parsed row) pairs so that a later stage can still name the line.
    """
    check_bad_row_policy(on_bad_row)
    parsed, skipped = [], 0
    for line, raw in numbered:
        try:
            parsed.append((line, parse_row(raw)))
        except RowProblem as problem:
            bad = BadRowError(source, line, str(problem))
            if on_bad_row == "error":
                raise bad from problem
            skipped += 1
            logger.warning("skipping bad row: %s, line %d: %s", source, line, problem)
    if skipped:
        logger.warning("skipped %d bad row(s) of %d in %s", skipped, skipped + len(parsed), source)
    return parsed


MAX_ROW_BYTES = 1_000_000  # far above any real row (an 8-shot GSM8K prompt is ~10 KB)


def _decode_json_object(line: object) -> dict:
    if len(line) > MAX_ROW_BYTES:
        raise RowProblem(f"the line is {len(line):,} bytes; a row is at most {MAX_ROW_BYTES:,}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowProblem(f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise RowProblem(f"not valid JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(value, dict):
        raise RowProblem(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl_numbered(path: str | Path, on_bad_row: str = "error") -> list[tuple[int, dict]]:
    """Read a JSONL file into (1-based line number, row) pairs; blank lines are not rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path} (check the path or the --data-dir)")
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is a bad row, named by its number
        numbered = [(i, line) for i, line in enumerate(handle, start=1) if line.strip()]
    return parse_rows(numbered, _decode_json_object, str(path), on_bad_row)


def read_jsonl(path: str | Path, on_bad_row: str = "error") -> list[dict]:
    """Read a JSONL file of JSON objects, one per line."""
    return [row for _, row in read_jsonl_numbered(path, on_bad_row)]


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as UTF-8 JSONL (parent folders are created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def split_train_validation(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle with `seed` and hold out round(len * val_fraction) rows for validation.

    Both parts keep the original relative order of their rows, so a split is easy to diff.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1), e.g. 0.1 for a 90/10 split")
    n_val = round(len(rows) * val_fraction)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:n_val])
    train = [row for i, row in enumerate(rows) if i not in val_ids]
    validation = [row for i, row in enumerate(rows) if i in val_ids]
    return train, validation
