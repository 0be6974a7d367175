"""Store files of dead nodes: each raylet locks its namespace, anyone reclaims a free one.

A raylet holds, for its whole life, a POSIX record lock (``fcntl.lockf``) on
``<dir>/<namespace>.lock`` in every directory its store writes (primary and spill). The
kernel drops such a lock when the process dies, however it dies (SIGKILL, the OOM killer),
and forked children never inherit it. So a lock file whose lock can be taken belongs to a
dead raylet, and whatever its namespace left in that directory (objects, partial writes,
pooled files) is garbage nobody can read any more. :func:`reclaim_orphans` removes it; the
next raylet on the host calls it when it starts, and so does ``rayr stop``.

Namespaces without a lock file (older versions of rayr, other tools, the contract tests)
are never touched. Only lock files owned by this user are considered, and only files in
the directory that holds the lock file are removed: a lock file is a name, not a list of
paths, so a stranger's file in /dev/shm can make us delete nothing outside it.

Only I/O on directories: no Redis, so it works when the cluster is gone.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
from collections.abc import Iterable

from rayr.config import Settings

LOCK_SUFFIX = ".lock"
SHM_DIRECTORY = "/dev/shm"

# (st_dev, st_ino) of each lock file this process holds -> the holder's pid. POSIX locks
# belong to a process, not a descriptor: locking our own file again "succeeds", and closing
# any descriptor of it drops the lock. So a process must never probe its own lock files;
# this table, a mirror of what the kernel keeps per process, lets it skip them (a forked
# child, another pid, holds nothing and probes normally).
_held: dict[tuple[int, int], int] = {}


def spill_directory(settings: Settings) -> str:
    """Where this host's stores spill: ``object_spilling_directory``, else ``<temp_dir>/spill``."""
    return settings.object_spilling_directory or os.path.join(settings.temp_dir, "spill")


def store_directories(settings: Settings) -> list[str]:
    """Directories where the stores of nodes started with ``settings`` keep files on this host:
    /dev/shm, the spill directory, and each session's ``objects`` (the ``mmap`` backend)."""
    sessions = sorted(glob.glob(os.path.join(glob.escape(settings.temp_dir), "session_*", "objects")))
    return [SHM_DIRECTORY, spill_directory(settings), *sessions]


class NamespaceLock:
    """The lock files that mark a store namespace as in use, held until :meth:`release`."""

    def __init__(self, namespace: str, directories: Iterable[str]) -> None:
        self.namespace = namespace
        self._fds: dict[str, int] = {}  # lock file path -> its descriptor (holding the lock)
        try:
            for directory in dict.fromkeys(directories):
                self._take(os.path.join(directory, namespace + LOCK_SUFFIX))
        except BaseException:
            self.release()
            raise

    def _take(self, path: str) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            # renamed into place only once locked: a reclaimer never sees it free
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            remove_file(tmp)
            raise
        _held[(st.st_dev, st.st_ino)] = os.getpid()
        self._fds[path] = fd

    def release(self) -> None:
        """Remove the lock files and drop the locks (call after the store was cleaned up)."""
        for path, fd in self._fds.items():
            remove_file(path)  # first: the file must not outlive the lock for a reclaimer to find
            st = os.fstat(fd)
            _held.pop((st.st_dev, st.st_ino), None)
            os.close(fd)
        self._fds.clear()


def _held_here(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return _held.get((st.st_dev, st.st_ino)) == os.getpid()


def _lock_if_orphaned(path: str) -> int | None:
    """A descriptor holding the lock of ``path`` if its raylet is dead, else None."""
    if _held_here(path):  # probing would drop our own lock
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:  # gone meanwhile, a symlink, or not ours to open
        return None
    try:
        if os.fstat(fd).st_uid == os.geteuid():  # another user's lock is not ours to judge
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):  # those say: its raylet is alive
            os.close(fd)
            raise
    os.close(fd)
    return None


def _lock_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return [n for n in names if n.endswith(LOCK_SUFFIX)]


def orphaned_namespaces(directory: str) -> list[str]:
    """Namespaces with a lock file in ``directory`` whose raylet is dead (nothing is removed)."""
    out = []
    for name in _lock_files(directory):
        fd = _lock_if_orphaned(os.path.join(directory, name))
        if fd is not None:
            os.close(fd)
            out.append(name[: -len(LOCK_SUFFIX)])
    return out


def reclaim_orphans(directories: Iterable[str]) -> list[str]:
    """Remove the files of dead raylets' namespaces from ``directories``; the namespaces freed.

    For each lock file whose lock is free: every ``<namespace>-*`` file in its directory,
    then the lock file itself (last, so an interrupted reclaim is finished by the next one).
    """
    freed = []
    for directory in dict.fromkeys(directories):
        for name in _lock_files(directory):
            path = os.path.join(directory, name)
            fd = _lock_if_orphaned(path)
            if fd is None:
                continue
            try:
                namespace = name[: -len(LOCK_SUFFIX)]
                prefix = namespace + "-"
                try:
                    leftovers = [n for n in os.listdir(directory) if n.startswith(prefix)]
                except FileNotFoundError:
                    leftovers = []
                for leftover in leftovers:
                    remove_file(os.path.join(directory, leftover))
                remove_file(path)
                freed.append(namespace)
            finally:
                os.close(fd)
    return freed


def remove_file(path: str) -> None:
    """``os.unlink`` of a file that may be gone already."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
