"""A raylet's runtime envs: each set up once in the background, kept once ready, and a
failure remembered for a while so the tasks that keep arriving for it fail at once."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rayr.exceptions import RuntimeEnvSetupError
from rayr.runtime_env import installer, packaging
from rayr.runtime_env.validation import setup_timeout

FAILURE_TTL_S = 30.0  # a failed env is tried again after this long

log = logging.getLogger("rayr.runtime_env")


class EnvManager:
    """Setups run on a small thread pool; results reach the owner's thread through
    :meth:`finished`, and ``wake`` is called after each so it looks."""

    def __init__(self, r: Any, keys: Any, session_dir: str, temp_dir: str, wake: Callable[[], None]) -> None:
        self._r = r
        self._keys = keys
        self._session_dir = session_dir
        self._temp_dir = temp_dir
        self._wake = wake
        self._ready: dict[str, installer.WorkerEnv] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._running: set[str] = set()
        self._done: queue.SimpleQueue[tuple[str, installer.WorkerEnv | None, str]] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None

    def ready(self, env: str) -> installer.WorkerEnv | None:
        return self._ready.get(env)

    def failure(self, env: str) -> str | None:
        """Why the env's last setup failed, if it failed recently."""
        failed = self._failed.get(env)
        if failed is None:
            return None
        if time.monotonic() - failed[0] > FAILURE_TTL_S:
            del self._failed[env]
            return None
        return failed[1]

    def mark_failed(self, env: str, error: str) -> None:
        self._ready.pop(env, None)
        self._failed[env] = (time.monotonic(), error)

    def start(self, env: str) -> None:
        """Begin setting ``env`` up unless it is ready, failed recently or under way."""
        if env in self._ready or env in self._running or self.failure(env) is not None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rayr-env")
        self._running.add(env)
        self._pool.submit(self._setup, env)

    def _setup(self, env: str) -> None:
        try:
            resolved = packaging.lookup(self._r, self._keys, env)
            if resolved is None:
                raise RuntimeEnvSetupError(f"runtime env {env} is not in the cluster's Redis")
            started = time.monotonic()
            worker_env = installer.prepare(
                resolved,
                fetch=lambda digest: self._r.get(self._keys.package(digest)),
                session_dir=self._session_dir,
                temp_dir=self._temp_dir,
                timeout=setup_timeout(resolved),
            )
            log.info("runtime env %s ready in %.2fs", env, time.monotonic() - started)
            self._done.put((env, worker_env, ""))
        except Exception as err:  # every failure is reported to the tasks that need the env
            log.warning("runtime env %s could not be set up: %s", env, err)
            message = str(err) if isinstance(err, RuntimeEnvSetupError) else f"{type(err).__name__}: {err}"
            self._done.put((env, None, message))
        self._wake()

    def finished(self) -> list[tuple[str, installer.WorkerEnv | None, str]]:
        """Setups that ended since the last call: (env, how to start workers or None, error)."""
        out: list[tuple[str, installer.WorkerEnv | None, str]] = []
        while True:
            try:
                env, worker_env, error = self._done.get_nowait()
            except queue.Empty:
                return out
            self._running.discard(env)
            if worker_env is not None:
                self._ready[env] = worker_env
            else:
                self._failed[env] = (time.monotonic(), error)
            out.append((env, worker_env, error))

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
