"""Per process: the runtime env its tasks inherit, and the env hash of each task env seen."""

from __future__ import annotations

import json
import threading
from typing import Any

from rayr.gcs import control
from rayr.runtime_env import packaging
from rayr.runtime_env.validation import eager_install


class EnvResolver:
    """Turns a task's ``runtime_env`` option into the hash its shape carries.

    The parent env is the job's (in a driver) or the env the worker runs in; a task's own
    env is merged over it. Each distinct env is packaged and registered once per process.
    """

    def __init__(self, r: Any, keys: Any, limit: int) -> None:
        self._r = r
        self._keys = keys
        self._limit = limit
        self.parent_hash = ""
        self._parent: dict[str, Any] | None = None
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()

    def set_parent(self, digest: str, resolved: dict[str, Any] | None = None) -> None:
        self.parent_hash = digest
        self._parent = resolved

    def parent(self) -> dict[str, Any]:
        """The resolved env tasks submitted here inherit ({} for none)."""
        if self._parent is None:
            found = packaging.lookup(self._r, self._keys, self.parent_hash) if self.parent_hash else None
            self._parent = found or {}
        return self._parent

    def hash_for(self, env: dict[str, Any] | None) -> str:
        """The env hash of a task with option ``env`` (validated), "" for the default env.

        Raises:
            ValueError: a path in it is missing, or packs larger than the limit.
        """
        if env is None:
            return self.parent_hash
        key = json.dumps(env, sort_keys=True)
        digest = self._hashes.get(key)
        if digest is None:
            with self._lock:
                digest, _ = packaging.derive(self.parent(), env, self._r, self._keys, self._limit)
                self._hashes[key] = digest
        return digest


def job_env(
    gcs: Any, runtime_env: dict[str, Any] | None, submitted: str | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """(hash, resolved env) of a driver's job: the env it was submitted with (``submitted``,
    resolved JSON from the job supervisor) with ``init(runtime_env=...)`` merged over it."""
    parent = json.loads(submitted) if submitted else {}
    if not parent and not runtime_env:
        return "", {}
    digest, resolved = packaging.derive(parent, runtime_env, gcs.r, gcs.keys, limit)
    if digest and resolved.keys() & {"working_dir", "py_modules", "pip"} and eager_install(resolved):
        with gcs.r.pipeline(transaction=False) as pipe:  # every node installs it now, not on first use
            for node in gcs.alive_nodes():
                pipe.xadd(gcs.keys.node_stream(node.node_id), control.PrepareEnv(digest).fields())
            pipe.execute()
    return digest, resolved
