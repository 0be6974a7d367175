"""POSIX shared memory: objects as files in a tmpfs (``/dev/shm``), zero-copy for every
process on the node. See ``files.py`` for the layout, spilling and restore."""

from __future__ import annotations

from rayr.backends.files import FileBackend, FileOptions


class ShmOptions(FileOptions):
    directory: str = "/dev/shm"


class ShmBackend(FileBackend):
    """The default backend where /dev/shm is large enough."""

    name = "shm"
    Options = ShmOptions
