"""The judge: runs inside the sandbox, one process per program (see rewards/sandbox.py).

Started as `python -I _sandbox_judge.py` (as root inside fresh namespaces when the
host allows it). It then

1. mounts size-capped tmpfs over the world-writable directories (when it has a
   mount namespace), sets the rlimits, drops to the unprivileged slot uid and
   makes itself non-dumpable, so a same-uid process cannot ptrace it or read
   its memory through /proc;
2. reads the first part of the job (the candidate programs) from stdin;
3. forks the *candidate* process, which closes every descriptor it inherited,
   runs the program and then serves calls to the entry point over two pipes;
4. only then reads the second part of the job (the tests), so the candidate
   never holds them in memory;
5. runs the test's `check` body statement by statement, with `candidate` bound
   to a proxy that forwards each call to the candidate process and decodes the
   reply into plain builtin values;
6. writes one JSON result message to the descriptor that was stdout at start
   (the judge's own prints go to /dev/null; its stderr goes to the parent, for
   crashes of the judge itself).

For a program that fails, the result's `detail` says what went wrong, for a
teacher to read: the syntax or load error, or the first failing statement of
`check` with the exception it raised, or the timeout or death of the program,
cut to the job's `detail_chars`. Exceptions the program raised are formatted in
the candidate process (formatting them runs the program's code); the judge only
clips the text it gets back.

Self-contained on purpose: under `-I` nothing from the repository is importable.
"""

import ast
import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import struct
import sys
import textwrap
import time

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 2, 4, 4096, 16384
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# Imported before the uid drop when the Python installation is unreadable to
# other users and cannot be re-mounted: what HumanEval-style programs use.
COMMON_MODULES = (
    "bisect",
    "collections",
    "copy",
    "datetime",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
)
MAX_MESSAGE_BYTES = 16 * 2**20
# Statuses of a program that did not load: its own report, or the judge's (CandidateProxy.failure).
FAILURES = ("syntax_error", "load_error", "timeout", "died", "bad_reply")
_HEADER = struct.Struct("<I")
_CUT = " [... cut]"


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


# ---- the judge ----


def how_it_ended(pid: int) -> str:
    """"exited with code N" or "was killed by signal SIGKILL" once process `pid` has ended (waiting
    up to 0.1 s for it), else "". WNOWAIT leaves it unreaped, so its pid is not reused before kill()."""
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
    """Stands in for the candidate function inside the judge's test code."""

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
        except (CandidateError, OSError, ValueError, RecursionError) as error:
            _, detail = self.failure(error)
            self.kill()
            raise CandidateError(detail) from None
        if type(reply) is list and len(reply) == 2 and reply[0] == "return":
            try:
                return decode(reply[1])
            except (ValueError, TypeError, RecursionError) as error:
                raise CandidateError(f"The program returned a value the judge cannot read: {error}.") from None
        if type(reply) is list and len(reply) == 2 and reply[0] == "raise" and type(reply[1]) is str:
            raise CandidateError(reply[1])  # formatted by the candidate: "Type: message (line N: source)"
        raise CandidateError("The program sent a malformed reply.")

    def failure(self, error: Exception) -> tuple[str, str]:
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
        if isinstance(error, (ValueError, RecursionError)):  # not JSON, or nested too deeply to read
            return "bad_reply", "The program sent a malformed reply."
        return "bad_reply", str(error)  # e.g. over MAX_MESSAGE_BYTES

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(self.pid, 9)


def test_units(test_source: str) -> tuple[str, list[tuple[object, bool, str]]] | None:
    """(`check`'s parameter name, [(compiled statement, contains an assert, its source)]) for
    each top-level statement of `check`, or None if they cannot run one by one."""
    check = [n for n in ast.parse(test_source).body if isinstance(n, ast.FunctionDef) and n.name == "check"][-1]
    units = []
    for statement in check.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or bare constant
        try:
            code = compile(ast.Module(body=[statement], type_ignores=[]), "<test>", "exec")
        except SyntaxError:
            return None  # e.g. `return` inside check: run it whole instead
        source = textwrap.dedent(ast.get_source_segment(test_source, statement, padded=True) or "")
        units.append((code, any(isinstance(n, ast.Assert) for n in ast.walk(statement)), source))
    if not any(counted for _, counted, _ in units):
        return None
    return check.args.args[0].arg, units


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


def run_tests(
    context: str, test_source: str, entry_point: str, proxy: CandidateProxy, detail_chars: int
) -> tuple[int, int, str]:
    """(passed, total, detail) over the test units; each top-level assert statement of `check` is one
    unit. detail: "" when all pass, else the first statement of `check` that failed (an assert, or a
    statement before it whose failure caused it) and what it raised."""
    namespace = {"__name__": "__judge__"}
    try:
        exec(compile(context, "<prompt>", "exec"), namespace)  # helpers the tests use
    except Exception:  # noqa: BLE001 - the prompt is optional context, not the program
        namespace = {"__name__": "__judge__"}
    # As in HumanEval's own harness, where tests may call the function by name.
    namespace[entry_point] = proxy
    exec(compile(test_source, "<test>", "exec"), namespace)
    split = test_units(test_source)
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


def _traversable_by_others(path: str) -> bool:
    """Whether a process of another uid can reach `path` (o+x on it and every ancestor)."""
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _moved(path: str, root: str, target: str) -> str:
    """`path` with its leading `root` replaced by `target` (unchanged if outside `root`)."""
    return target + path[len(root) :] if path == root or path.startswith(root + os.sep) else path


def expose_python(libc, can_mount: bool) -> None:
    """Keep the standard library importable after the uid drop.

    An interpreter installed under a private directory (e.g. pyenv in /root,
    mode 700) is unreadable to the slot uid: bind-mount it into the sandbox's
    own /tmp and point sys.path there, or, without a mount namespace, import the
    common modules now.
    """
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
    hidden = sorted(root for root in roots if not _traversable_by_others(root))
    if hidden and not can_mount:
        for name in COMMON_MODULES:
            __import__(name)
        return
    for index, root in enumerate(hidden):
        target = f"/tmp/.python{index}"
        os.mkdir(target, 0o755)
        if libc.mount(root.encode(), target.encode(), None, MS_BIND | MS_REC, None):
            raise OSError(ctypes.get_errno(), f"bind-mount {root} on {target}")
        sys.path[:] = [_moved(os.path.realpath(p), root, target) for p in sys.path]
        for module in list(sys.modules.values()):  # packages already imported find submodules via __path__
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = [_moved(os.path.realpath(p), root, target) for p in module.__path__]
    sys.path_importer_cache.clear()


def confine(job: dict) -> None:
    """Mounts, rlimits, privilege drop, non-dumpable: everything before the untrusted fork."""
    libc = ctypes.CDLL(None, use_errno=True)
    workdir = job["workdir"]
    if job["mount_tmpfs"]:
        # A Python installed under a directory about to be masked (e.g. a venv in /tmp) is
        # held open now and bound back at its own path inside the fresh tmpfs.
        # Real paths: a venv reached through a symlink (e.g. ./.venv -> /tmp/...) lives under /tmp too.
        masked = [os.path.realpath(d) for d in WORLD_WRITABLE_DIRS if os.path.isdir(d)]
        roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
        keep = {root: os.open(root, os.O_PATH) for root in roots if any(_moved(root, d, "") != root for d in masked)}
        options = f"size={job['tmpfs_mb']}m,mode=1777".encode()
        for target in masked:
            if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options):
                raise OSError(ctypes.get_errno(), f"mount tmpfs on {target}")
        for root, fd in keep.items():
            os.makedirs(root, 0o755)
            if libc.mount(f"/proc/self/fd/{fd}".encode(), root.encode(), None, MS_BIND | MS_REC, None):
                raise OSError(ctypes.get_errno(), f"bind {root} back after masking")
            os.close(fd)
        workdir = "/tmp/sandbox"
        os.mkdir(workdir, 0o700)
    if job["uid"] is not None:
        expose_python(libc, can_mount=job["mount_tmpfs"])
        os.chown(workdir, job["uid"], job["uid"])
    cpu_s = int(job["timeout_s"]) + 1
    for limit, value in (
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
        (resource.RLIMIT_AS, (job["memory_mb"] * 2**20,) * 2),
        (resource.RLIMIT_FSIZE, (job["file_size_mb"] * 2**20,) * 2),
        (resource.RLIMIT_NPROC, (job["max_processes"],) * 2),
        (resource.RLIMIT_NOFILE, (job["max_open_files"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(limit, value)
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.chdir(workdir)


def main() -> None:
    job = receive(0)
    result_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)
    confine(job)
    deadline = time.monotonic() + job["timeout_s"]
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            run_candidate(job["programs"], job["entry_point"], requests_r, replies_w, job["detail_chars"])
        finally:
            os._exit(1)  # never run the judge's code below in the candidate process
    os.close(requests_r)
    os.close(replies_w)
    tests = receive(0)  # read only now: the candidate never had the tests in memory
    result = {"loaded": False, "passed": 0, "total": 0, "status": "no reply", "detail": ""}
    proxy = CandidateProxy(pid, requests_w, replies_r, deadline, job["timeout_s"])
    try:
        hello = receive(replies_r, deadline)
    except (CandidateError, OSError, ValueError, RecursionError) as error:
        hello = list(proxy.failure(error))
    if hello == ["ready"]:
        result["status"], result["loaded"] = "ready", True
        result["passed"], result["total"], detail = run_tests(
            job["context"], tests["test"], job["entry_point"], proxy, job["detail_chars"]
        )
    elif type(hello) is list and len(hello) == 2 and hello[0] in FAILURES and type(hello[1]) is str:
        result["status"], detail = hello  # syntax_error/load_error from the candidate, or a failure above
    else:
        result["status"], detail = "bad_reply", "The program wrote a malformed message to the judge's channel."
    result["detail"] = clip(detail, job["detail_chars"])
    proxy.kill()
    if job["uid"] is not None and not job["pid_namespace"]:
        # The slot uid is ours alone: take every process the candidate left behind.
        with contextlib.suppress(ProcessLookupError):  # none left
            os.kill(-1, 9)
    send(result_fd, result)


if __name__ == "__main__":
    main()
