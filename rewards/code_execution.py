"""Code-execution reward for HumanEval-style rows (`prompt`, `test`, `entry_point`).

The program is extracted from the completion, run in `rewards.sandbox` (see its
docstring for the threat model) and scored:

- 0.0 when there is no code, it is longer than `MAX_CODE_CHARS`, it does not
  compile, it fails at top level or does not define `entry_point`;
- `partial_credit` when it loads but fails a test;
- 1.0 when every test passes. With `fractional=True`, a program that loads
  scores `partial_credit + (1 - partial_credit) * passed / total`, where a
  test is one top-level statement of `check` holding an assert that uses the
  program's result and is not always true: `assert True` (HumanEval's debugging
  lines), `assert 1`, `assert x == x` or a non-empty tuple are not tests.

`code_feedback` runs the same programs and returns what went wrong in words
(the failing test and its error), for a teacher's prompt (DistIL).
"""

import os
import re

from rewards import sandbox
from rewards.registry import check_rows, register

_PYTHON_TAGS = frozenset({"", "python", "python3", "py"})
# Far above any real solution; CPython needs ~1 s to compile 1 MB of statements,
# so longer code is refused before it reaches the sandbox.
MAX_CODE_CHARS = 100_000


def code_blocks(completion: str) -> list[str]:
    """Python code blocks fenced with ``` in `completion` (an unclosed last fence
    counts: generation often stops before the closing one)."""
    parts = completion.split("```")
    blocks = []
    for body in parts[1::2]:
        tag, newline, code = body.partition("\n")
        if newline and tag.strip().lower() in _PYTHON_TAGS:
            blocks.append(code)
    return blocks


def defines(code: str, entry_point: str) -> bool:
    return (
        re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", code, re.MULTILINE) is not None
    )


def extract_code(completion: str, entry_point: str) -> str:
    """The program text of `completion`: the last fenced Python block that
    defines `entry_point`, else the last fenced Python block, else the whole
    completion (bare code)."""
    blocks = code_blocks(completion)
    defining = [b for b in blocks if defines(b, entry_point)]
    if defining:
        return defining[-1]
    if blocks:
        return blocks[-1]
    return "" if "```" in completion else completion


def candidate_programs(code: str, prompt: str, entry_point: str) -> list[str]:
    """Programs to try in order: a full function goes after the prompt (whose
    helpers it may call) or alone; indented code continues the prompt's function
    (a body); anything else runs alone, so that the prompt's docstring-only stub
    never passes for the completion's function."""
    if defines(code, entry_point):
        return [f"{prompt}\n{code}", code] if prompt else [code]
    first_line = code.lstrip("\n").partition("\n")[0]
    if prompt and first_line[:1] in (" ", "\t"):
        return [prompt + code]
    return [code]


def _check_options(
    partial_credit: float = 0.2,
    fractional: bool = False,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    allow_unisolated: bool = False,
) -> None:
    if not isinstance(allow_unisolated, bool):
        raise ValueError(f"code_execution: allow_unisolated={allow_unisolated!r} must be true or false")
    if not 0.0 <= partial_credit < 1.0:
        raise ValueError(f"code_execution: partial_credit={partial_credit!r} must be in [0, 1)")
    if not isinstance(fractional, bool):
        raise ValueError(f"code_execution: fractional={fractional!r} must be true or false")
    sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb)
    if max_workers is not None and not 0 < max_workers <= sandbox.MAX_SLOTS:
        raise ValueError(f"code_execution: max_workers={max_workers!r} must be in 1..{sandbox.MAX_SLOTS}")


def default_workers(environ=os.environ) -> int:
    """Programs run at once: this node's CPUs shared by its training processes (torchrun and the
    deepspeed launcher export LOCAL_WORLD_SIZE), so that 8 ranks on one node do not start 8 x CPUs."""
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // max(processes, 1))


def score(outcome: sandbox.Outcome, partial_credit: float, fractional: bool) -> float:
    if not outcome.loaded:
        return 0.0
    if outcome.total > 0 and outcome.passed == outcome.total:
        return 1.0
    if fractional and outcome.total > 0:
        return partial_credit + (1.0 - partial_credit) * outcome.passed / outcome.total
    return partial_credit


def _run_rows(
    completions: list[str],
    test: list[str | None],
    entry_point: list[str | None],
    prompts: list,
    timeout_s: float,
    memory_mb: int,
    max_workers: int | None,
    allow_unisolated: bool,
) -> list[sandbox.Outcome | None]:
    """Each completion's program run against its row's test: an Outcome per code row, None for rows
    without a test. Code that is missing or over MAX_CODE_CHARS gets an Outcome without a run."""
    sandbox.require_isolation(allow_unisolated)
    check_rows("code_execution", completions, test=test, entry_point=entry_point, prompt=prompts)
    jobs, job_rows = [], []
    outcomes: list[sandbox.Outcome | None] = [None] * len(completions)
    for row, (completion, row_test, name, row_prompt) in enumerate(zip(completions, test, entry_point, prompts)):
        if row_test is None:
            continue
        if not isinstance(name, str) or not name.isidentifier() or "def check(" not in row_test:
            raise ValueError(
                f"code_execution: row {row} needs `entry_point` (a function name, got {name!r}) and a "
                f"`test` program that defines check(candidate)"
            )
        code = extract_code(completion, name)
        if not code.strip() or len(code) > MAX_CODE_CHARS:
            detail = (f"The code is {len(code):,} characters long, over the {MAX_CODE_CHARS:,} limit."
                      if code.strip() else "The completion contains no Python code.")
            outcomes[row] = sandbox.Outcome(loaded=False, passed=0, total=0, status="not_run", detail=detail)
            continue
        context = row_prompt if isinstance(row_prompt, str) else ""
        jobs.append(
            {
                "programs": candidate_programs(code, context, name),
                "entry_point": name,
                "test": row_test,
                "context": context,
            }
        )
        job_rows.append(row)
    limits = sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb)
    workers = min(max_workers or default_workers(), sandbox.MAX_SLOTS)
    for row, outcome in zip(job_rows, sandbox.run_many(jobs, limits, workers) if jobs else []):
        outcomes[row] = outcome
    return outcomes


@register("code_execution", check_options=_check_options)
def code_execution_reward(
    completions: list[str],
    test: list[str | None],
    entry_point: list[str | None],
    prompt: list[str] | None = None,
    *,
    partial_credit: float = 0.2,
    fractional: bool = False,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    allow_unisolated: bool = False,
    **columns,
) -> list[float | None]:
    """Run each completion's program against its row's `test` in a sandbox.

    test: a program defining `check(candidate)` (HumanEval's format); rows with
        None are not code rows and score None.
    entry_point: the name of the function under test.
    prompt: the row's code prompt (signature + docstring + helpers); without it
        `prompts` is used when it is a string.
    partial_credit: reward for a program that loads but fails a test.
    fractional: scale between partial_credit and 1.0 by the fraction of tests passed (asserts that
        are always true do not count).
    timeout_s, memory_mb: per-program wall clock, and memory (each process, and all the program's
        processes together where a cgroup can be made).
    max_workers: programs run at once (default: the node's CPUs divided by its training processes).
    allow_unisolated: run programs even where the host cannot isolate them fully (no namespaces,
        or not root); without it that is a SandboxUnavailable error at the first call, naming the fix.
    A sandbox failure that is not the program's doing raises SandboxError (after one retry).
    """
    _check_options(partial_credit, fractional, timeout_s, memory_mb, max_workers, allow_unisolated)
    prompts = prompt if prompt is not None else columns.get("prompts")
    if prompts is None:
        prompts = [""] * len(completions)
    outcomes = _run_rows(completions, test, entry_point, prompts, timeout_s, memory_mb, max_workers, allow_unisolated)
    return [None if outcome is None else score(outcome, partial_credit, fractional) for outcome in outcomes]


def code_feedback(
    completions: list[str],
    test: list[str | None],
    entry_point: list[str | None],
    prompt: list[str] | None = None,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    allow_unisolated: bool = False,
) -> list[str | None]:
    """What each completion's program got wrong, in words, for a teacher's prompt.

    Runs the programs `code_execution_reward` runs (same arguments, same sandbox) and returns, per
    row: None for a row without a test (not a code row), "All tests passed." for a program that
    passes, else `sandbox.Outcome.detail` (at most sandbox.MAX_DETAIL_CHARS), e.g.
    "The program failed this test:\n  assert candidate(2) == 4\nAssertionError" or
    "SyntaxError: expected ':' (line 1: def add(a, b))". Pass the same `prompt` as to the reward.
    Failures of the sandbox itself raise (SandboxUnavailable, SandboxError), never become feedback.
    """
    _check_options(timeout_s=timeout_s, memory_mb=memory_mb, max_workers=max_workers, allow_unisolated=allow_unisolated)
    prompts = prompt if prompt is not None else [""] * len(completions)
    outcomes = _run_rows(completions, test, entry_point, prompts, timeout_s, memory_mb, max_workers, allow_unisolated)
    return [None if outcome is None else feedback(outcome) for outcome in outcomes]


def feedback(outcome: sandbox.Outcome) -> str:
    """The text `code_feedback` gives for one program's Outcome."""
    if outcome.loaded and outcome.total > 0 and outcome.passed == outcome.total:
        return "All tests passed."
    return outcome.detail or f"The program failed ({outcome.status})."
