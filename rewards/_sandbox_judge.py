"""The judge: runs inside the sandbox, one process per program (see rewards/sandbox.py).

Started as `python -I _sandbox_judge.py` (as root inside fresh namespaces when the
host allows it). It then

1. reads the first part of the job (the candidate programs) from stdin, ignores
   every signal it can, and (with `_sandbox_confine`) switches to a minimal
   read-only root, names the host "sandbox" and sets the rlimits;
2. forks the *candidate* process, which joins the sandbox's cgroups, drops every
   capability and switches to the program's uid, and reports on a setup pipe
   whether that worked; the judge meanwhile drops every capability, switches to
   its own uid (so the program cannot signal or ptrace it) and becomes
   non-dumpable;
3. only then reads the second part of the job (the tests), so the candidate
   never holds them in memory, and compiles them;
4. tells the candidate to go: it closes every descriptor it inherited, runs the
   program and then serves calls to the entry point over two pipes;
5. runs the test's `check` body statement by statement, with `candidate` bound
   to a proxy that forwards each call to the candidate process and decodes the
   reply into plain builtin values;
6. writes one JSON result message to the descriptor that was stdout at start
   (the judge's own prints go to /dev/null; its stderr goes to the parent).

A failure before step 4 is the sandbox's (the parent raises it); from step 4 on,
whatever goes wrong is the program's doing or happens while judging it (a reply
that exhausts the judge's memory), and the result scores 0 (status
"judge_error" when the judge itself raised, its traceback on stderr).

For a program that fails, the result's `detail` says what went wrong, for a
teacher to read: the syntax or load error, or the first failing statement of
`check` with the exception it raised, or the timeout or death of the program,
cut to the job's `detail_chars`. Exceptions the program raised are formatted in
the candidate process (formatting them runs the program's code); the judge only
clips the text it gets back.

Self-contained on purpose: under `-I` nothing from the repository is importable;
`_sandbox_confine.py`, next to this file, is loaded by path.
"""

import ast
import contextlib
import importlib.util
import json
import os
import resource
import select
import signal
import struct
import textwrap
import time
import traceback

MAX_MESSAGE_BYTES = 16 * 2**20
# Statuses of a program that did not load: its own report, or the judge's (CandidateProxy.failure).
FAILURES = ("syntax_error", "load_error", "timeout", "died", "bad_reply")
_HEADER = struct.Struct("<I")
_CUT = " [... cut]"
_GO = b"g"
_SETUP_OK = b"ok"
# Exceptions from reading or decoding what the candidate sent: all mean a bad reply, never a judge crash.
_BAD_READS = (OSError, ValueError, RecursionError, MemoryError)


class SandboxSetupError(RuntimeError):
    """The candidate process could not be confined: the sandbox's failure, not the program's."""


class CandidateError(Exception):
    """The candidate failed a call: it raised, timed out, died or sent bad data. The message is
    the detail a teacher reads (e.g. "ZeroDivisionError: division by zero (line 2: return a / b)")."""


class CandidateTimeout(CandidateError):
    """The candidate did not answer before the deadline."""


class CandidateGone(CandidateError):
    """The candidate process closed its end of the pipe: it exited, or was killed."""


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the cut marked."""
    return text if len(text) <= limit else text[: max(limit - len(_CUT), 0)] + _CUT


# ---- wire format: JSON with tagged containers, decoded into exact builtin types ----


def encode(value):
    """Plain data -> JSON-able tree. Only exact builtin types: an int subclass
    with a rigged `__eq__` is refused, not converted."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        return {{list: "l", tuple: "t", set: "s", frozenset: "f"}[kind]: [encode(v) for v in value]}
    if kind is dict:
        return {"d": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"cannot pass a {kind.__name__} across the sandbox; use builtin data types")


def decode(tree):
    """Inverse of `encode`; raises ValueError/TypeError on anything else."""
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is not dict or len(tree) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = tree.items()
    if tag in ("l", "t", "s", "f") and type(body) is list:
        items = [decode(v) for v in body]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {decode(k): decode(v) for k, v in body}
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    raise ValueError(f"malformed value tag {tag!r}")


def send(fd: int, message) -> None:
    data = json.dumps(message).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, remaining = [], n
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise CandidateTimeout("timed out")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise CandidateGone("The program's process closed its channel to the judge.")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, deadline: float | None = None):
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    if size > MAX_MESSAGE_BYTES:
        raise CandidateError(f"The program's reply of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit.")
    return json.loads(_read_exactly(fd, size, deadline))


# ---- the candidate process ----


def _close_inherited_fds(keep: set[int]) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for fd in range(3, soft_limit):
        if fd not in keep:
            with contextlib.suppress(OSError):  # most are not open
                os.close(fd)


def _line(program: str, lineno) -> str:
    """` (line N: source)` for line `lineno` of `program`, or "" when there is no such line."""
    lines = program.splitlines()
    if type(lineno) is not int or not 0 < lineno <= len(lines):
        return ""
    return f" (line {lineno}: {lines[lineno - 1].strip()})"


def describe_syntax_error(error: BaseException, program: str, limit: int) -> str:
    """`SyntaxError: msg (line N: source)` for an error of compile() on `program`, in `limit` // 2 characters."""
    if isinstance(error, SyntaxError):
        return clip(f"{type(error).__name__}: {error.msg}", limit // 3) + clip(_line(program, error.lineno), limit // 6)
    return clip(f"{type(error).__name__}: {error}", limit // 2)


def describe(error: BaseException, program: str, limit: int) -> str:
    """`Type: message (line N: source)` for an exception the program raised, N being the line of
    `program` where it was raised, in `limit` // 2 characters, so that it fits beside a test's source.
    Formatting it runs the program's code (`__str__`, a metaclass's `__name__`), which is why this
    runs in the candidate process only; if that fails, a fixed text."""
    try:
        name, message = type(error).__name__, str(error)
        text = clip(f"{name}: {message}" if message else str(name), limit // 3)
        lineno, frame = None, error.__traceback__
        while frame is not None:  # the innermost frame of the program's own code
            if frame.tb_frame.f_code.co_filename == "<completion>":
                lineno = frame.tb_lineno
            frame = frame.tb_next
        return text + clip(_line(program, lineno), limit // 6)
    except BaseException:  # noqa: BLE001 - the exception object is the program's and may do anything
        return "an exception that cannot be displayed"


def run_candidate(programs: list[str], entry_point: str, requests: int, replies: int, detail_chars: int) -> None:
    """Child side: load the first program that compiles, then serve calls. Never returns."""
    _close_inherited_fds({requests, replies})
    namespace = {"__name__": "__candidate__"}
    # The program is arbitrary code: it may raise anything, SystemExit included,
    # and every such outcome means "did not load".
    try:
        code = syntax_error = None
        for program in programs:
            try:
                code = compile(program, "<completion>", "exec")
                break
            except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
                syntax_error = describe_syntax_error(error, program, detail_chars)  # the last program's
                continue
        if code is None:
            send(replies, ["syntax_error", syntax_error])
            os._exit(0)
        exec(code, namespace)
        function = namespace.get(entry_point)
        if not callable(function):
            send(replies, ["load_error", f"The program does not define a function named {entry_point!r}."])
            os._exit(0)
        send(replies, ["ready"])
    except BaseException as error:  # noqa: BLE001 - see comment above
        send(replies, ["load_error", "Running the program raised " + describe(error, program, detail_chars)])
        os._exit(0)
    while True:
        try:
            args = decode(receive(requests))
            reply = ["return", encode(function(*args))]
        except CandidateError:
            os._exit(0)  # the judge closed the pipe: done
        except BaseException as error:  # noqa: BLE001 - untrusted code may raise anything
            reply = ["raise", describe(error, program, detail_chars)]
        send(replies, reply)


def start_candidate(job: dict, confine, handlers: dict, cgroup_fds: list[int], workdir: str, uid: int | None,
                    pipes: dict) -> None:
    """Child side: join the sandbox's cgroups (still root), restore the signal handlers, drop
    every privilege, report on the setup pipe, wait for the judge's go, run the program. Never returns."""
    try:
        for fd in cgroup_fds:
            os.write(fd, str(os.getpid()).encode())
        confine.restore_signals(handlers)
        confine.drop_privileges(uid)
        confine.die_with_parent()
        os.chdir(workdir)
        report = _SETUP_OK
    except BaseException as error:  # noqa: BLE001 - any failure here is the sandbox's, reported to the judge
        report = f"{type(error).__name__}: {error}".encode()
    os.write(pipes["setup_w"], report)
    os.close(pipes["setup_w"])
    if report != _SETUP_OK or os.read(pipes["go_r"], 1) != _GO:
        os._exit(0)
    run_candidate(job["programs"], job["entry_point"], pipes["requests_r"], pipes["replies_w"], job["detail_chars"])


# ---- the judge ----


def how_it_ended(pid: int) -> str:
    """"exited with code N" or "was killed by signal SIGKILL" once process `pid` has ended (waiting
    up to 0.1 s for it), else "". WNOWAIT leaves it unreaped for the namespace's teardown."""
    for _ in range(10):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return ""
        if info is not None:
            if info.si_code == os.CLD_EXITED:
                return f"exited with code {info.si_status}"
            with contextlib.suppress(ValueError):  # a number with no name
                return f"was killed by signal {signal.Signals(info.si_status).name}"
            return f"was killed by signal {info.si_status}"
        time.sleep(0.01)
    return ""


class CandidateProxy:
    """Stands in for the candidate function inside the judge's test code.

    The judge cannot kill the candidate (another uid): after a timeout or a bad reply it stops
    calling it and closes the request pipe; whatever still runs dies with the sandbox."""

    def __init__(self, pid: int, requests: int, replies: int, deadline: float, timeout_s: float):
        self.pid, self.requests, self.replies, self.deadline = pid, requests, replies, deadline
        self.timeout_s = timeout_s
        self.dead = False

    def __call__(self, *args):
        if self.dead:
            raise CandidateError("The program timed out or died earlier.")
        try:
            send(self.requests, encode(list(args)))
            reply = receive(self.replies, self.deadline)
        except (CandidateError, *_BAD_READS) as error:
            _, detail = self.failure(error)
            self.close()
            raise CandidateError(detail) from None
        if type(reply) is list and len(reply) == 2 and reply[0] == "return":
            try:
                return decode(reply[1])
            except (TypeError, *_BAD_READS) as error:
                raise CandidateError(f"The program returned a value the judge cannot read: {error!r}.") from None
        if type(reply) is list and len(reply) == 2 and reply[0] == "raise" and type(reply[1]) is str:
            raise CandidateError(reply[1])  # formatted by the candidate: "Type: message (line N: source)"
        raise CandidateError("The program sent a malformed reply.")

    def failure(self, error: BaseException) -> tuple[str, str]:
        """(status, detail) for an exchange with the candidate process that raised `error`."""
        if isinstance(error, CandidateTimeout):
            return "timeout", f"Timeout: the program ran past its {self.timeout_s:g} s time limit."
        if isinstance(error, (CandidateGone, OSError)):  # OSError: a broken pipe on send
            ended = how_it_ended(self.pid)
            if ended:
                return "died", f"The program's process {ended}."
            if isinstance(error, CandidateGone):
                return "died", str(error)
            return "died", f"The program's process stopped ({error})."
        if isinstance(error, MemoryError):
            return "bad_reply", "The program sent a reply too large for the judge's memory."
        if isinstance(error, (ValueError, RecursionError)):  # not JSON, or nested too deeply to read
            return "bad_reply", "The program sent a malformed reply."
        return "bad_reply", str(error)  # e.g. over MAX_MESSAGE_BYTES

    def close(self) -> None:
        if not self.dead:
            self.dead = True
            os.close(self.requests)  # a candidate waiting for a call sees the end and exits


# ---- which statements of `check` are tests ----


def _always_true(test: ast.expr) -> bool:
    """Whether an assert's condition holds whatever the program does: a truthy constant or a
    non-empty literal (`assert (x, "msg")`), `x == x`, or and/or/not over those."""
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, (ast.Tuple, ast.List, ast.Set)):
        return bool(test.elts)
    if isinstance(test, ast.Dict):
        return bool(test.keys)
    if isinstance(test, ast.BoolOp):
        return (any if isinstance(test.op, ast.Or) else all)(_always_true(v) for v in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return isinstance(test.operand, ast.Constant) and not test.operand.value
    if isinstance(test, ast.Compare):
        left = ast.dump(test.left)
        return all(isinstance(op, (ast.Eq, ast.Is, ast.LtE, ast.GtE)) and ast.dump(right) == left
                   for op, right in zip(test.ops, test.comparators))
    return False


def _uses_program(node: ast.AST, program: set[str], results: set[str]) -> bool:
    """Whether `node` calls the program (a name in `program` called or passed to a call) or reads
    a name in `results` (a value computed from a call of the program)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            operands = [sub.func, *sub.args, *(k.value for k in sub.keywords)]
            if any(isinstance(o, ast.Name) and o.id in program for o in operands):
                return True
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id in results:
            return True
    return False


def _names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def program_results(check: ast.FunctionDef, program: set[str]) -> tuple[set[str], set[str]]:
    """(functions, values): the names in `check` that stand for the program (`program`, and
    functions whose body calls it) and those bound to what it computed (assigned, looped over or
    bound by `with` from an expression that uses it), wherever in `check`, to a fixed point."""
    program, results = set(program), set()
    while True:
        functions, values = set(), set()
        for node in ast.walk(check):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not check:
                if any(_uses_program(statement, program, results) for statement in node.body):
                    functions.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
                if node.value is not None and _uses_program(node.value, program, results):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    values.update(*(_names(t) for t in targets))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                if _uses_program(node.iter, program, results):
                    values.update(_names(node.target))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                if _uses_program(node.context_expr, program, results):
                    values.update(_names(node.optional_vars))
        if functions <= program and values <= results:
            return program, results
        program |= functions
        results |= values


def tests_the_program(statement: ast.stmt, program: set[str], results: set[str]) -> bool:
    """Whether `statement` holds an assert whose condition depends on the program and is not
    always true: `assert True`, `assert 1`, `assert x == x` are no tests of it."""
    return any(isinstance(n, ast.Assert) and _uses_program(n.test, program, results) and not _always_true(n.test)
               for n in ast.walk(statement))


def test_units(test_source: str, entry_point: str) -> tuple[str, list[tuple[object, bool, str]]] | None:
    """(`check`'s parameter name, [(compiled statement, tests the program, its source)]) for each
    top-level statement of `check`, or None if they cannot run one by one or none is a test."""
    check = [n for n in ast.parse(test_source).body if isinstance(n, ast.FunctionDef) and n.name == "check"][-1]
    parameter = check.args.args[0].arg
    program, results = program_results(check, {parameter, entry_point})
    units = []
    for statement in check.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or bare constant
        try:
            code = compile(ast.Module(body=[statement], type_ignores=[]), "<test>", "exec")
        except SyntaxError:
            return None  # e.g. `return` inside check: run it whole instead
        source = textwrap.dedent(ast.get_source_segment(test_source, statement, padded=True) or "")
        units.append((code, tests_the_program(statement, program, results), source))
    if not any(counted for _, counted, _ in units):
        return None
    return parameter, units


def failed_test(source: str, error: Exception, limit: int) -> str:
    """What a teacher reads about a failed test statement: its source and what it raised."""
    if isinstance(error, CandidateError):
        raised = str(error)  # already a sentence about the program: its exception, timeout or death
    else:  # raised in the judge by the trusted test code (AssertionError, or e.g. a TypeError on a None result)
        raised = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    statement = textwrap.indent(clip(source.strip(), limit // 3), "  ")
    return clip(f"The program failed this test:\n{statement}\n{clip(raised, limit // 2)}", limit)


def failing_line(test_source: str, error: BaseException) -> str:
    """The line of the test program where `error` was raised (innermost), or "check(candidate)"."""
    lines, lineno, frame = test_source.splitlines(), None, error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename == "<test>":
            lineno = frame.tb_lineno
        frame = frame.tb_next
    return lines[lineno - 1].strip() if lineno and 0 < lineno <= len(lines) else "check(candidate)"


def prepare_tests(context: str, test_source: str, entry_point: str, proxy: CandidateProxy) -> tuple[dict, tuple | None]:
    """(namespace with `check` defined and `entry_point` bound to the proxy, `test_units`). Trusted
    code, compiled before the program runs: an error here is the test row's, never a score."""
    namespace = {"__name__": "__judge__"}
    try:
        exec(compile(context, "<prompt>", "exec"), namespace)  # helpers the tests use
    except Exception:  # noqa: BLE001 - the prompt is optional context, not the program
        namespace = {"__name__": "__judge__"}
    # As in HumanEval's own harness, where tests may call the function by name.
    namespace[entry_point] = proxy
    exec(compile(test_source, "<test>", "exec"), namespace)
    return namespace, test_units(test_source, entry_point)


def run_tests(namespace: dict, split: tuple | None, test_source: str, proxy: CandidateProxy,
              detail_chars: int) -> tuple[int, int, str]:
    """(passed, total, detail) over the test units; each top-level statement of `check` with an
    assert that tests the program is one unit. detail: "" when all pass, else the first statement
    of `check` that failed (an assert, or a statement before it whose failure caused it) and what
    it raised."""
    if split is None:
        try:
            namespace["check"](proxy)
            return 1, 1, ""
        except Exception as error:  # noqa: BLE001 - any failure of the test program is a failed test
            return 0, 1, failed_test(failing_line(test_source, error), error, detail_chars)
    parameter, units = split
    namespace[parameter] = proxy
    passed = total = 0
    detail = ""
    for code, counted, source in units:
        total += counted
        try:
            exec(code, namespace)
            passed += counted
        except Exception as error:  # noqa: BLE001 - any failure of a test statement fails that unit
            detail = detail or failed_test(source, error, detail_chars)
    return passed, total, detail if passed < total else ""


def load_confine():
    """`_sandbox_confine.py`, next to this file (not importable by name under -I)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_confine.py")
    spec = importlib.util.spec_from_file_location("_sandbox_confine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_host(confine, job: dict, program_uid: int | None) -> str:
    """As root, before the fork: the new root (with a mount namespace), the host name, the rlimits.
    Returns the program's working directory."""
    if job["mount_namespace"]:
        confine.enter_minimal_root(job["workdir"], job["tmpfs_mb"])  # the parent's temporary folder: a mount point
        workdir = "/tmp/sandbox"
        os.mkdir(workdir, 0o700)
    else:
        workdir = job["workdir"]
        if program_uid is not None:
            confine.import_common_modules_if_hidden()
    if program_uid is not None:
        os.chown(workdir, program_uid, program_uid)
    if job["uts_namespace"]:
        confine.set_hostname()
    confine.set_limits(job)
    return workdir


def judge(job: dict, tests: dict, namespace: dict, split, proxy: CandidateProxy) -> dict:
    """The result of the program that is now running: its hello, then the tests."""
    result = {"loaded": False, "passed": 0, "total": 0, "status": "no reply", "detail": ""}
    try:
        hello = receive(proxy.replies, proxy.deadline)
    except (CandidateError, *_BAD_READS) as error:
        hello = list(proxy.failure(error))
    if hello == ["ready"]:
        result["status"], result["loaded"] = "ready", True
        result["passed"], result["total"], detail = run_tests(namespace, split, tests["test"], proxy,
                                                              job["detail_chars"])
    elif type(hello) is list and len(hello) == 2 and hello[0] in FAILURES and type(hello[1]) is str:
        result["status"], detail = hello  # syntax_error/load_error from the candidate, or a failure above
    else:
        result["status"], detail = "bad_reply", "The program wrote a malformed message to the judge's channel."
    result["detail"] = clip(detail, job["detail_chars"])
    return result


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def main() -> None:
    job = receive(0)
    result_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)
    confine = load_confine()
    handlers = confine.ignore_signals()
    judge_uid, program_uid = job["uids"] or (None, None)
    cgroup_fds = [os.open(path, os.O_WRONLY) for path in job["cgroup_procs"]]
    workdir = prepare_host(confine, job, program_uid)
    deadline = time.monotonic() + job["timeout_s"]
    pipes = {}
    pipes["requests_r"], pipes["requests_w"] = os.pipe()
    pipes["replies_r"], pipes["replies_w"] = os.pipe()
    pipes["setup_r"], pipes["setup_w"] = os.pipe()
    pipes["go_r"], pipes["go_w"] = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(pipes["setup_r"])
            os.close(pipes["go_w"])
            start_candidate(job, confine, handlers, cgroup_fds, workdir, program_uid, pipes)
        finally:
            os._exit(1)  # never run the judge's code below in the candidate process
    for fd in (*cgroup_fds, pipes["requests_r"], pipes["replies_w"], pipes["setup_w"], pipes["go_r"]):
        os.close(fd)
    confine.drop_privileges(judge_uid)
    confine.make_undumpable()
    tests = receive(0)  # read only now: the candidate never had the tests in memory
    proxy = CandidateProxy(pid, pipes["requests_w"], pipes["replies_r"], deadline, job["timeout_s"])
    namespace, split = prepare_tests(job["context"], tests["test"], job["entry_point"], proxy)
    report = _read_to_end(pipes["setup_r"])
    if report != _SETUP_OK:
        raise SandboxSetupError(f"the program's process could not be confined: {report.decode(errors='replace')}")
    os.write(pipes["go_w"], _GO)
    os.close(pipes["go_w"])
    try:
        result = judge(job, tests, namespace, split, proxy)
    except BaseException as error:  # noqa: BLE001 - the program is running: whatever happens now scores 0
        traceback.print_exc()
        result = {"loaded": False, "passed": 0, "total": 0, "status": "judge_error",
                  "detail": clip(f"The judge could not finish judging the program ({type(error).__name__}).",
                                 job["detail_chars"])}
    proxy.close()
    send(result_fd, result)


if __name__ == "__main__":
    main()
