"""Run untrusted programs against trusted tests, one sandbox per program.

Threat model
------------
The program is written by the policy, which is rewarded for passing the tests,
so it is an adversary that will take any shortcut. The tests, the prompt and the
trainer are trusted. The sandbox must (1) keep the program from harming the
machine or the trainer and (2) keep it from earning a pass it did not earn.

Layout of one run (Linux, as root, the normal case here and in CI)::

    trainer ── unshare --net --pid --mount --mount-proc ── judge (PID 1, slot uid)
                                                              └── candidate (fork)

- `unshare` gives a new network namespace (only a downed loopback: no network),
  a new PID namespace (the program sees only itself and the judge; `kill(-1)`
  reaches nothing outside; when the judge exits the kernel kills every process
  left in it, fork bombs included) and a mount namespace in which the judge puts
  size-capped tmpfs over /tmp, /var/tmp, /dev/shm and /run/lock.
- The judge drops to a dedicated unprivileged uid per concurrency slot (so the
  per-uid RLIMIT_NPROC, which root ignores, caps a fork bomb without starving
  the other slots), after setting RLIMIT_CPU/AS/FSIZE/NPROC/NOFILE/CORE. Files
  of the trainer (owned by root, not world-writable) cannot be written or
  deleted. `no_new_privs` stops setuid binaries from regaining privileges.
- `python -I` (no environment variables, no user site, no script dir on the
  path), a minimal environment, and a throwaway working directory.
- The parent enforces a wall-clock timeout and kills the process group.

How success is decided (what the program cannot forge)
------------------------------------------------------
The program never runs in the process that decides success. The judge forks
the candidate process, which closes every descriptor it inherited, runs the
program, then serves calls to the entry point over a pipe. The judge reads the
tests only after that fork, runs `check`'s statements itself with `candidate`
bound to a proxy, and the proxy turns each reply into plain builtin values
(JSON with tagged containers), so:

- `exit(0)` / `os._exit(0)` before the tests: no "ready" reply, 0;
- printing a success marker: the program's stdout is /dev/null and the result
  travels on a descriptor only the judge holds;
- redefining `assert`/`AssertionError`, patching `check`, builtins or the harness:
  those live in the judge's process, which the program cannot reach (it is
  non-dumpable, so ptrace and /proc/<pid>/mem are refused);
- an object whose `__eq__` is always True, or an int subclass: only exact
  builtin types cross the pipe, anything else raises in the test;
- killing or stopping the judge: it is PID 1 of the namespace, which ignores
  signals from inside it; a dead judge reports nothing, which scores 0;
- reading the expected outputs: the tests are never in the program's memory.

Not defended: the program can read world-readable files (the repository, the
Python installation); it can burn its CPU and memory budget; a program that
hard-codes the outputs for the visible docstring examples passes the tests
that happen to be those examples; side channels. Without root the judge cannot
switch uid: with unprivileged user namespaces the network, PID and mount
isolation remain but files of the trainer's user stay writable; without
`unshare` only the rlimits remain, and a warning is logged.
"""

import dataclasses
import functools
import json
import logging
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rewards.registry import RewardInfrastructureError

logger = logging.getLogger(__name__)

JUDGE = Path(__file__).with_name("_sandbox_judge.py")
# Sandboxed processes run as SLOT_UID_BASE + MAX_SLOTS * (pid % 100000) + slot:
# far above the uids of real users and of the usual subordinate-uid ranges
# (100000 + 65536 * k), and distinct per trainer process and slot, so one
# sandbox's fork bomb never eats another's RLIMIT_NPROC budget.
SLOT_UID_BASE = 2_900_000_000
MAX_SLOTS = 256
_HEADER = struct.Struct("<I")
_KILL_GRACE_S = 2.0
# Longest Outcome.detail: enough for a failing assert and its error, short enough for a prompt.
MAX_DETAIL_CHARS = 1000
_MINIMAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock for loading the program and running all tests
    memory_mb: int = 1024  # RLIMIT_AS of the judge and of the candidate, each
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    tmpfs_mb: int = 64  # size of each tmpfs mounted over a world-writable directory
    max_processes: int = 32  # RLIMIT_NPROC for the slot uid (tasks, threads included)
    max_open_files: int = 64  # RLIMIT_NOFILE

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(f"sandbox limit {field.name}={value!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class Outcome:
    loaded: bool  # the program compiled, ran at top level and defined the entry point
    passed: int  # test units (top-level assert statements of `check`) that passed
    total: int
    status: str  # "ready", "syntax_error", "load_error", "timeout", "died", "bad_reply" (for logs)
    # What went wrong, for a teacher to read ("" when every test passed), at most MAX_DETAIL_CHARS
    # (a longer one is cut, the cut marked). One of: the compile error of the last program tried
    # ("SyntaxError: expected ':' (line 1: def add(a, b))"); what running it raised ("Running the
    # program raised NameError: ... (line N: source)"); the first statement of `check` that failed
    # and what it raised ("The program failed this test:\n  assert candidate(2) == 4\nAssertionError",
    # or the program's own "ZeroDivisionError: division by zero (line 2: return a / b)"); a timeout or
    # the death of its process. Line numbers count lines of the program that ran, which starts with the
    # prompt when the code was appended to it. The exception messages are the program's own text.
    detail: str = ""


class SandboxUnavailable(RewardInfrastructureError):
    """This host cannot isolate programs as the threat model needs; the message says why and the fix."""


class SandboxError(RewardInfrastructureError):
    """The sandbox failed for a reason that is not the program's doing (the judge crashed, could
    not start, or returned nothing), twice in a row; the message holds the judge's traceback."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    command_prefix: tuple[str, ...]  # the `unshare ...` prefix, or () when unavailable
    switch_uid: bool  # running as root: drop to a slot uid
    missing: str = ""  # what is missing for full isolation, "" when nothing is

    @property
    def namespaces(self) -> bool:
        return bool(self.command_prefix)


def isolation() -> Isolation:
    """What this host allows: namespaces via `unshare`, uid switching via root. Probed once per
    PATH and effective uid."""
    return _probe(os.environ.get("PATH", ""), os.geteuid())


@functools.cache
def _probe(path: str, euid: int) -> Isolation:
    is_root = euid == 0
    unshare = shutil.which("unshare", path=path)
    flags = ("--net", "--pid", "--fork", "--kill-child", "--mount-proc")
    if not is_root:
        flags = ("--map-root-user",) + flags
    prefix = (unshare, *flags) if unshare else ()
    missing = []
    if prefix:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode != 0:
            missing.append(f"`unshare` failed ({probe.stderr.decode(errors='replace')[-300:].strip()}): no "
                           "network, PID or mount namespaces, so programs can reach the network and leave "
                           "processes behind")
            prefix = ()
    else:
        missing.append("`unshare` is not on PATH: no network, PID or mount namespaces, so programs can reach "
                       "the network and leave processes behind")
    if not is_root:
        missing.append(f"not running as root: programs cannot be moved to an unprivileged uid, so they can "
                       f"write the files of user {os.getuid()}")
    return Isolation(command_prefix=prefix, switch_uid=is_root, missing="; ".join(missing))


_WARNED: set = set()


def require_isolation(allow_unisolated: bool) -> Isolation:
    """The host's isolation, if it is full; else a SandboxUnavailable error naming what is missing
    and the fix, unless the reward option allow_unisolated is set (then one warning)."""
    iso = isolation()
    if not iso.missing:
        return iso
    if not allow_unisolated:
        raise SandboxUnavailable(
            f"code_execution cannot isolate the programs it runs on this host: {iso.missing}. Fix: run as root "
            "with util-linux's `unshare` on PATH and user namespaces allowed (as in CI and containers), or accept "
            "the weaker isolation with the reward option allow_unisolated: true (recipe: "
            "`options: {allow_unisolated: true}`)"
        )
    if iso.missing not in _WARNED:
        _WARNED.add(iso.missing)
        logger.warning("code_execution runs programs with weaker isolation (allow_unisolated): %s", iso.missing)
    return iso


def _user_task_count(uid: int) -> int:
    """Tasks (processes and threads) owned by `uid`: RLIMIT_NPROC counts them all."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except (FileNotFoundError, PermissionError):
                continue  # exited meanwhile, or not ours to look at
    return count


def _message(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    return _HEADER.pack(len(data)) + data


def _parse_result(stdout: bytes) -> dict | None:
    if len(stdout) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(stdout[: _HEADER.size])
    try:
        result = json.loads(stdout[_HEADER.size : _HEADER.size + size])
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def _reap_slot_uid(uid: int) -> None:
    """Without a PID namespace, kill whatever a timed-out program left running as `uid`."""
    subprocess.run([sys.executable, "-I", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                   user=uid, group=uid, extra_groups=[], capture_output=True, check=False)


def _run_once(programs: list[str], entry_point: str, test: str, context: str, limits: Limits,
              slot: int) -> Outcome | str:
    """One sandboxed run: its Outcome, or the judge's stderr when it gave no result."""
    iso = isolation()
    uid = SLOT_UID_BASE + MAX_SLOTS * (os.getpid() % 100_000) + slot if iso.switch_uid else None
    max_processes = limits.max_processes
    if uid is None:  # the limit counts all our user's tasks, the trainer's too
        max_processes += _user_task_count(os.getuid())
    with tempfile.TemporaryDirectory(prefix="reward-sandbox-") as workdir:
        job = {
            "programs": programs,
            "entry_point": entry_point,
            "context": context,
            "workdir": workdir,
            "mount_tmpfs": iso.namespaces,
            "pid_namespace": iso.namespaces,
            "uid": uid,
            "timeout_s": limits.timeout_s,
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "tmpfs_mb": limits.tmpfs_mb,
            "max_processes": max_processes,
            "max_open_files": limits.max_open_files,
            "detail_chars": MAX_DETAIL_CHARS,
        }
        process = subprocess.Popen(
            [*iso.command_prefix, sys.executable, "-I", str(JUDGE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_MINIMAL_ENV,
            start_new_session=True,  # its own process group, killed as a whole
        )
        try:
            stdout, stderr = process.communicate(
                _message(job) + _message({"test": test}), timeout=limits.timeout_s + _KILL_GRACE_S
            )
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            if uid is not None and not iso.namespaces:
                _reap_slot_uid(uid)
            return Outcome(loaded=False, passed=0, total=0, status="timeout",
                           detail=f"Timeout: the program ran past its {limits.timeout_s:g} s time limit.")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result = _parse_result(stdout)
    if result is None:
        return f"exit code {process.returncode}; stderr:\n{stderr.decode(errors='replace')[-3000:]}"
    return Outcome(
        loaded=bool(result.get("loaded")),
        passed=int(result.get("passed", 0)),
        total=int(result.get("total", 0)),
        status=str(result.get("status")),
        detail=str(result.get("detail", ""))[:MAX_DETAIL_CHARS],  # the judge cut it already (marked)
    )


def run_program(programs: list[str], entry_point: str, test: str, context: str, limits: Limits, slot: int) -> Outcome:
    """Run the first of `programs` that compiles, then `test`'s `check`, in one sandbox.

    programs: candidate program texts, tried in order (e.g. prompt + code, code).
    context: trusted code the tests may need (the HumanEval prompt's helpers).
    slot: index of the concurrency slot, which picks the uid.
    What the program does (fail, hang, misbehave) is its score; a judge that gives no result is
    not the program's doing (the judge's own process and descriptor are out of its reach): it is
    tried once more, then raised as SandboxError with the judge's traceback.
    """
    first = _run_once(programs, entry_point, test, context, limits, slot)
    if isinstance(first, Outcome):
        return first
    logger.warning("sandbox: the judge gave no result (%s); trying once more", first.splitlines()[0])
    second = _run_once(programs, entry_point, test, context, limits, slot)
    if isinstance(second, Outcome):
        return second
    raise SandboxError(f"the sandbox's judge failed twice without a result: {second}")


def run_many(jobs: list[dict], limits: Limits, max_workers: int) -> list[Outcome]:
    """`run_program(**job)` for each job, at most `max_workers` at a time, in order."""
    if not 0 < max_workers <= MAX_SLOTS:
        raise ValueError(f"sandbox: max_workers={max_workers} must be in 1..{MAX_SLOTS}")
    isolation()  # probe once, before the threads race to do it
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(max_workers):
        slots.put(slot)

    def run_in_a_slot(job: dict) -> Outcome:
        slot = slots.get()
        try:
            return run_program(**job, limits=limits, slot=slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(run_in_a_slot, jobs))
