"""One memory cap and one process cap for all the processes of a sandboxed program together
(Linux control groups), so that a program that forks cannot multiply its memory limit.

`find()` looks, as root, for a hierarchy it can create groups in, and checks by creating one:

- cgroup v2: a child of the cgroup2 mount's root, where the memory and pids controllers are (or
  can be) enabled: `memory.max`, `memory.swap.max` = 0, `pids.max`; emptied with `cgroup.kill`;
- cgroup v1: children of the trainer's own groups in the memory and pids hierarchies:
  `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` (where swap is accounted),
  `pids.max`; emptied by SIGKILL to each member until none is left.

Elsewhere (not root, no writable hierarchy) it returns None and the sandbox says so: the cap is
then per process (RLIMIT_AS) and the processes of one program may hold up to the memory limit
times the process limit together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import time
from collections.abc import Iterator

PREFIX = "grpo-sandbox-"  # groups are named PREFIX + "<trainer pid>-<name>-<n>"
_EMPTY_TIMEOUT_S = 5.0
_counter = itertools.count()


class CgroupError(OSError):
    """A sandbox's group could not be emptied and removed: some of its processes outlived SIGKILL."""


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    parents: tuple[str, ...]  # folders to create each group in: v2 one, v1 (memory, pids)

    def describe(self) -> str:
        return f"cgroup v{self.version} under {', '.join(self.parents)}"


def _unescape(path: str) -> str:
    """A path field of /proc/self/mountinfo, whose spaces and the like are octal escapes."""
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root within the hierarchy, mount point, file-system type, super options) of each mount."""
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            mounts.append((_unescape(fields[3]), _unescape(fields[4]), fstype, set(options.split(","))))
    return mounts


def _own_groups() -> dict[str, str]:
    """This process's group path per v1 controller ("memory", "pids", ...), from /proc/self/cgroup."""
    groups = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    groups[controller] = path
    return groups


def _write(path: str, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


def _v2_parent(mounts) -> str | None:
    """The cgroup2 mount's root, with memory and pids enabled for its children, or None."""
    for _root, point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        with open(os.path.join(point, "cgroup.controllers")) as available:
            if not {"memory", "pids"} <= set(available.read().split()):
                continue
        control = os.path.join(point, "cgroup.subtree_control")
        with open(control) as enabled:
            if not {"memory", "pids"} <= set(enabled.read().split()):
                _write(control, "+memory +pids")  # EBUSY where the root holds processes and is not the real root
        return point
    return None


def _v1_parents(mounts) -> tuple[str, str] | None:
    """The trainer's own groups in the v1 memory and pids hierarchies, or None."""
    own, found = _own_groups(), {}
    for root, point, fstype, options in mounts:
        for controller in {"memory", "pids"} & options:
            if fstype == "cgroup" and controller in own:
                path = own[controller]
                relative = path[len(root):] if root != "/" and path.startswith(root) else path
                found[controller] = os.path.join(point, relative.lstrip("/"))
    return (found["memory"], found["pids"]) if len(found) == 2 else None


def find() -> Hierarchy | None:
    """A hierarchy in which this process can create a capped group (see the module docstring)."""
    if os.geteuid() != 0:
        return None
    mounts = _mounts()
    candidates = []
    with contextlib.suppress(OSError):
        if parent := _v2_parent(mounts):
            candidates.append(Hierarchy(2, (parent,)))
    if parents := _v1_parents(mounts):
        candidates.append(Hierarchy(1, parents))
    for hierarchy in candidates:
        try:
            with group(hierarchy, "probe", memory_bytes=64 * 2**20, max_processes=8):
                return hierarchy
        except OSError:
            continue
    return None


def _limit(hierarchy: Hierarchy, folders: list[str], memory_bytes: int, max_processes: int) -> None:
    if hierarchy.version == 2:
        (folder,) = folders
        _write(os.path.join(folder, "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(folder, "memory.swap.max")):
            _write(os.path.join(folder, "memory.swap.max"), "0")
        _write(os.path.join(folder, "pids.max"), str(max_processes))
        return
    memory, pids = folders
    _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
    if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):  # swap accounted: cap it too
        _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(memory_bytes))
    _write(os.path.join(pids, "pids.max"), str(max_processes))


def _members(folder: str) -> list[int]:
    with open(os.path.join(folder, "cgroup.procs")) as procs:
        return [int(pid) for pid in procs.read().split()]


def _empty_and_remove(hierarchy: Hierarchy, folders: list[str]) -> None:
    """SIGKILL every process left in `folders` (groups of one sandbox) and remove them."""
    deadline = time.monotonic() + _EMPTY_TIMEOUT_S
    kill_file = os.path.join(folders[0], "cgroup.kill")
    if hierarchy.version == 2 and os.path.exists(kill_file):
        _write(kill_file, "1")
    pending = [f for f in folders if os.path.isdir(f)]
    while pending:
        for folder in pending:
            for pid in _members(folder):  # v1, or a v2 kernel without cgroup.kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):  # EBUSY until the killed processes have exited
                os.rmdir(folder)
        pending = [f for f in pending if os.path.isdir(f)]
        if pending and time.monotonic() > deadline:
            raise CgroupError(f"cannot remove the sandbox's cgroups {pending}: processes "
                              f"{[_members(f) for f in pending]} outlived SIGKILL for {_EMPTY_TIMEOUT_S:g} s")
        if pending:
            time.sleep(0.01)


@contextlib.contextmanager
def group(hierarchy: Hierarchy, name: str, memory_bytes: int, max_processes: int) -> Iterator[list[str]]:
    """A new group `name` (made unique, under PREFIX and this process's pid) capped at `memory_bytes`
    and `max_processes`; yields the `cgroup.procs` files a process writes its pid to in order to
    join it (one per hierarchy folder). On exit every process still in it is killed and the group
    removed."""
    unique = f"{PREFIX}{os.getpid()}-{name}-{next(_counter)}"
    folders = []
    try:
        for parent in hierarchy.parents:
            folders.append(os.path.join(parent, unique))
            os.mkdir(folders[-1])
        _limit(hierarchy, folders, memory_bytes, max_processes)
        yield [os.path.join(folder, "cgroup.procs") for folder in folders]
    finally:
        _empty_and_remove(hierarchy, folders)
