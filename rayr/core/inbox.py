"""The inbox reader: the one background thread of a core worker.

Results reach a process through its *inbox*, a Redis list that executors (and the Lua store
script, for objects it waits on but does not own) push to. The thread blocks on it (BLMOVE of
one message into the process's *taken* list), hands it to the core worker, then takes up to
1024 more at a time (a script that first empties the taken list: what it held was handled)
until the inbox is empty, and between batches does the process's housekeeping: counting down
dead refs, sending frees, and (in a driver) keeping its job's liveness key fresh.

A message is never popped outright: a reply lost to a dropped connection (a Redis restart, a
Sentinel failover) would lose what the pop took. After any Redis error the thread first
handles the taken list again; a message may so be handled twice, which filing tolerates as
it tolerates a task that ran twice. The connection must not retry by itself (``no_retry``):
a retried BLMOVE would take a second message while the first sat unhandled in the list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rayr.gcs import scripts
from rayr.gcs.client import REDIS_DOWN_ERRORS

log = logging.getLogger("rayr.core")
BATCH_MAX = 1024  # messages taken per round trip after the first


class InboxReader:
    """Reads ``inbox_key`` on its own connection until ``stop``."""

    def __init__(
        self,
        *,
        blocking_redis: Any,
        inbox_key: str,
        taken_key: str,
        on_messages: Callable[[list[bytes]], None],
        housekeeping: Callable[[], None],
        wake_waiters: Callable[[], None],
    ) -> None:
        self._redis = blocking_redis
        self._key = inbox_key
        self._taken = taken_key
        self._take = blocking_redis.register_script(scripts.TAKE_INBOX)
        self._on_messages = on_messages
        self._housekeeping = housekeeping
        self._wake_waiters = wake_waiters
        self.stopping = False
        # since when Redis has not answered (None: it answers); waiters give up after a limit
        self.down_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name="rayr-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end (after ``stopping`` was set and it was woken); True if
        it did, and its connection was closed."""
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            return False
        self._redis.close()
        return True

    def _loop(self) -> None:
        recover = True  # the taken list may hold what an earlier process or reply left unhandled
        more = False  # the last read took something: the inbox may hold more
        while not self.stopping:
            msgs: list[bytes] = []
            try:
                if recover:
                    msgs = self._redis.lrange(self._taken, 0, -1)
                    recover, more = False, True
                elif more:
                    msgs = self._take(keys=[self._key, self._taken], args=[BATCH_MAX])
                    more = bool(msgs)
                else:
                    item = self._redis.blmove(self._key, self._taken, 1, "LEFT", "RIGHT")
                    if item is not None:
                        msgs.append(item)
                        more = True
            except REDIS_DOWN_ERRORS:
                if self.stopping:
                    return
                recover = True
                if self.down_since is None:
                    self.down_since = time.monotonic()
                self._wake_waiters()  # they check how long Redis has been away
                time.sleep(0.2)  # e.g. Redis restarting
            else:
                self.down_since = None
            try:
                if msgs:
                    self._on_messages(msgs)
                self._housekeeping()
            except Exception:
                if self.stopping:
                    return
                log.exception("handling inbox messages failed")
                time.sleep(0.2)
