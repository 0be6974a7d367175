"""Memory-mapped files in any directory: the choice where /dev/shm is small (containers
default to 64 MiB). Reads are zero-copy through the page cache; past ``capacity`` objects
spill to ``spill_directory`` and are restored on access. See ``files.py``."""

from __future__ import annotations

from rayr.backends.files import FileBackend, FileOptions


class MmapOptions(FileOptions):
    directory: str = "/tmp"


class MmapBackend(FileBackend):
    """Objects as mapped files in ``directory``."""

    name = "mmap"
    Options = MmapOptions
