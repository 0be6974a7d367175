"""Files and directories only this user may read: sessions, logs, records of what runs.

Task output, object data and the Redis password all pass through them, and a host may be
shared with other users, so rayr creates them 0700 / 0600 whatever the umask.
"""

from __future__ import annotations

import os
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str) -> str:
    """``os.makedirs(path)``, each directory it creates 0700 (existing ones keep their mode:
    rayr may be given a temp dir the user shares on purpose); returns ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        private_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return path
    os.chmod(path, DIR_MODE)  # exactly 0700: the umask could also have taken the owner's bits
    return path


def open_log(path: str) -> IO[bytes]:
    """``path`` opened for appending, created 0600 if it does not exist."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE), "ab")


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (0600) atomically: readers see the old file or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
