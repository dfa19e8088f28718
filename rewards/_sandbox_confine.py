"""Confinement of the sandbox's judge and program processes (see rewards/sandbox.py).

Loaded by path by the judge (`python -I` imports nothing from the repository), which runs it
as root inside fresh namespaces when the host allows it, before the program's process exists:

- `enter_minimal_root`: a new, read-only root in the sandbox's mount namespace holding only
  the standard library and the folders of the shared libraries the interpreter has loaded
  (their site-packages and dist-packages hidden under empty mounts), /etc/ld.so.cache, /dev's
  null, zero, random and urandom, and empty size-capped tmpfs on /tmp and /dev/shm;
- `ignore_signals`: the judge ignores every signal that can be caught;
- `drop_privileges`: no capability left (bounding and ambient sets emptied too, so nothing
  the process runs regains one), optionally a new uid, no_new_privs.
"""

import ctypes
import glob
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_READ, PR_CAPBSET_DROP = 1, 4, 23, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
CAP_SETPCAP = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
FILES = ("/etc/ld.so.cache",)  # where the dynamic loader finds the shared libraries of extension modules
HIDDEN_PATTERNS = ("site-packages", "dist-packages", "*/site-packages", "*/dist-packages")
HOSTNAME = b"sandbox"
# Imported before the uid drop when the Python installation is unreadable to other users and
# there is no mount namespace to expose it in: what HumanEval-style programs use.
COMMON_MODULES = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools", "hashlib",
                  "heapq", "itertools", "math", "operator", "random", "re", "statistics", "string", "typing")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapSets(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None) -> None:
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(options)),
           f"mount {source} on {target}")


# ---- the minimal root ----


def outermost(paths) -> list[str]:
    """`paths` without those inside another of them."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(_inside(path, k) for k in kept):
            kept.append(path)
    return kept


def _third_party(path: str) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.split(os.sep))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def visible_trees() -> list[str]:
    """Real paths of the folders the program may read: the standard library's (the import path
    within the base installation, less site-packages and anything .pth files added elsewhere)
    and those of the shared libraries this process has mapped (less any in site-packages)."""
    bases = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    trees = {path for path in (os.path.realpath(p) for p in sys.path if p)
             if os.path.isdir(path) and not _third_party(path) and any(_inside(path, base) for base in bases)}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and ".so" in os.path.basename(path) and os.path.exists(path):
                if not _third_party(os.path.realpath(path)):
                    trees.add(os.path.dirname(os.path.realpath(path)))
    trees.discard("/")  # a library loaded from / would expose everything: it stays loaded, unseen
    return outermost(trees)


def hidden_dirs(trees: list[str]) -> list[str]:
    """The site-packages and dist-packages folders inside `trees`: third-party code and its data."""
    found = set()
    for tree in trees:
        for pattern in HIDDEN_PATTERNS:
            found.update(p for p in glob.glob(os.path.join(glob.escape(tree), pattern)) if os.path.isdir(p))
    return sorted(found)


def _kept_flags(path: str) -> int:
    """The mount flags of `path` that a read-only remount must repeat: in a user namespace the
    kernel refuses to clear flags the outer namespace set (noexec, the access-time mode)."""
    f_flag = os.statvfs(path).f_flag
    flags = MS_NOEXEC if f_flag & os.ST_NOEXEC else 0
    if f_flag & os.ST_NOATIME:
        flags |= MS_NOATIME
    elif f_flag & os.ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    return flags | (MS_NODIRATIME if f_flag & os.ST_NODIRATIME else 0)


def bind_read_only(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _kept_flags(source))


def _point_imports_at(trees: list[str]) -> None:
    """The import path: the standard library's folders only, by their real paths (those the new root has)."""
    sys.path[:] = [p for p in (os.path.realpath(p) for p in sys.path if p)
                   if any(_inside(p, t) for t in trees) and not _third_party(p) and os.path.isdir(p)]
    for module in list(sys.modules.values()):  # imported packages find their submodules through __path__
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [os.path.realpath(p) for p in module.__path__]
    sys.path_importer_cache.clear()


def enter_minimal_root(mount_point: str, tmpfs_mb: int) -> None:
    """Make a root of the visible trees (see the module docstring) on `mount_point`, an empty
    folder, and switch this process's root to it. Needs a private mount namespace."""
    trees = visible_trees()
    hidden = hidden_dirs(trees)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    mount("tmpfs", mount_point, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for directory in ("/tmp", "/dev/shm"):
        target = mount_point + directory
        os.makedirs(target, 0o755)
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={tmpfs_mb}m,mode=1777")
    for tree in trees:
        os.makedirs(mount_point + tree, 0o755, exist_ok=True)
        bind_read_only(tree, mount_point + tree)
    for directory in hidden:
        mount("tmpfs", mount_point + directory, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4k,mode=555")
    for name in os.listdir("/"):  # /lib -> usr/lib and the like: the loader's paths go through them
        if os.path.islink("/" + name) and not os.path.lexists(os.path.join(mount_point, name)):
            os.symlink(os.readlink("/" + name), os.path.join(mount_point, name))
    for path in FILES + DEVICES:
        if os.path.exists(path):
            os.makedirs(os.path.dirname(mount_point + path), 0o755, exist_ok=True)
            os.close(os.open(mount_point + path, os.O_CREAT | os.O_WRONLY, 0o444))
            if path in DEVICES:
                mount(path, mount_point + path, None, MS_BIND)
            else:
                bind_read_only(path, mount_point + path)
    _point_imports_at(trees)
    os.chdir(mount_point)
    mount(mount_point, "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def traversable_by_others(path: str) -> bool:
    """Whether a process of another uid can reach `path` (o+x on it and every ancestor)."""
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def import_common_modules_if_hidden() -> None:
    """Without a new root, a Python installed under a private folder (pyenv in /root, mode 700)
    is unreadable after the uid drop: import what programs commonly use now."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
    if not all(traversable_by_others(root) for root in roots):
        for name in COMMON_MODULES:
            __import__(name)


def set_hostname() -> None:
    _check(libc.sethostname(HOSTNAME, len(HOSTNAME)), "sethostname")


def set_limits(job: dict) -> None:
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


# ---- signals and privileges ----


def ignore_signals() -> dict:
    """Ignore every signal that can be caught, except SIGCHLD (the judge waits for its child).
    Returns the handlers they had, for the program's process to restore."""
    previous = {}
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            continue
        try:
            previous[number] = signal.signal(number, signal.SIG_IGN)
        except (OSError, ValueError):  # the C library's own real-time signals
            continue
    return previous


def restore_signals(handlers: dict) -> None:
    for number, handler in handlers.items():
        if handler is not None:  # None: set outside Python, nothing to restore
            signal.signal(number, handler)


def capability_sets() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this process, as 64-bit masks."""
    header, sets = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapSets * 2)()
    _check(libc.capget(ctypes.byref(header), sets), "capget")
    return tuple(sets[0].__getattribute__(n) | sets[1].__getattribute__(n) << 32
                 for n in ("effective", "permitted", "inheritable"))


def bounding_set() -> list[int]:
    """The capabilities in this process's bounding set (what an exec could grant)."""
    held, cap = [], 0
    while (answer := libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)) >= 0:
        if answer:
            held.append(cap)
        cap += 1
    return held


def drop_privileges(uid: int | None) -> None:
    """Leave this process no capability, now or after an exec, and no way to gain one; switch to
    `uid` (its own group, no supplementary groups) when given. Raises if any privilege remains.
    A process that holds no capability (a plain user's) cannot empty its bounding set, and needs
    not: under no_new_privs nothing it runs gains a capability."""
    privileged = capability_sets()[0] & (1 << CAP_SETPCAP)
    if privileged:  # root, in the host's or a user namespace
        for cap in bounding_set():
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap} from the bounding set")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear the ambient capabilities")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    header, empty = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapSets * 2)()
    _check(libc.capset(ctypes.byref(header), empty), "clear the capability sets")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    if any(capability_sets()) or (privileged and bounding_set()):
        raise PermissionError(f"capabilities remain after dropping them: sets {capability_sets()}, "
                              f"bounding {bounding_set()}")
    if uid is not None and os.getresuid() != (uid,) * 3:
        raise PermissionError(f"uids are {os.getresuid()} after switching to {uid}")


def make_undumpable() -> None:
    """No same-uid process may ptrace this one or read its memory through /proc."""
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "set the judge non-dumpable")


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the judge) exits. Set after the uid switch, which clears it."""
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "set the parent-death signal")
