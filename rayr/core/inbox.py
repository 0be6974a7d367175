"""The inbox reader: the one background thread of a core worker.

Results reach a process through its *inbox*, a Redis list that executors (and the Lua store
script, for objects it waits on but does not own) push to. The thread blocks on it (BLMOVE of
one message into the process's *taken* list, written with a DEL of the taken list before it
and an LLEN of the inbox after it), hands it to the core worker, then, if more wait, takes up
to 1024 more at a time (a script that first empties the taken list: what it held was handled)
until the inbox is empty, and between batches does the process's housekeeping: counting down
dead refs, sending frees, and (in a driver) keeping its job's liveness key fresh.

A message is never popped outright: a reply lost to a dropped connection (a Redis restart, a
Sentinel failover) would lose what the pop took. After any Redis error the thread first
handles the taken list again; a message may so be handled twice, which filing tolerates as
it tolerates a task that ran twice. The connection must not retry by itself (``no_retry``):
a retried BLMOVE would take a second message while the first sat unhandled in the list.

A thread waiting alone in get/wait reads the inbox itself (``read_here``) when the thread is
not in a read, and files what it takes: a sync call then needs no thread hand-off. One token
says who reads; a waiter never blocks for it (it waits to be woken instead, as before), and
after a lone waiter read, the thread stays off the inbox for ``YIELD_S`` so that the next
sync call finds it free; a waiter that found the token taken, or is not alone, ends that
pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from rayr.gcs import scripts
from rayr.gcs.client import REDIS_DOWN_ERRORS
from rayr.gcs.stream_read import packed, round_trip

log = logging.getLogger("rayr.core")
# an error reply too (a full Redis refuses the BLMOVE): waiters see Redis as away, not a hang
READ_ERRORS = (*REDIS_DOWN_ERRORS, redis.ResponseError)
BATCH_MAX = 1024  # messages taken per round trip after the first
BLOCK_S = 1.0  # the inbox thread's blocking read gives the token back this often
YIELD_S = 0.005  # after a waiter read the inbox, the thread stays off it this long


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
        # whoever reads the inbox holds the token: the inbox thread, or a waiter reading it
        # itself (read_here); it guards the read state below and the taken list's meaning
        # ("everything in it was handled") between reads
        self._token = threading.Lock()
        self._recover = True  # the taken list may hold what an earlier process or reply left unhandled
        self._more = False  # the last read took something: the inbox may hold more
        self._yield_until = 0.0  # the inbox thread leaves the inbox to waiters until then
        # set: a waiter needs the thread to read (not to pause); it also ends a pause
        self._wanted = threading.Event()
        self._handoff = False  # ... and it waits alone: after delivering, leave the inbox to it
        self._housekeeping_lock = threading.Lock()  # the thread's and a waiter's, never both
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

    def _read(self, block_s: float) -> list[bytes]:
        """One read (under ``_token``): the taken list after an error, else up to BATCH_MAX
        waiting messages, else block up to ``block_s`` for one. Raises Redis errors."""
        if self._recover:
            msgs = self._redis.lrange(self._taken, 0, -1)
            self._recover, self._more = False, True
            return msgs
        if self._more:
            msgs = self._take(keys=[self._key, self._taken], args=[BATCH_MAX])
            self._more = bool(msgs)
            if msgs or block_s <= 0:
                return msgs
        return self._block_for_one(block_s)

    def _block_for_one(self, block_s: float) -> list[bytes]:
        """In one write: empty the taken list (all it held was handled), wait up to ``block_s``
        for a message (BLMOVE into the taken list), and learn whether more wait behind it. A
        loop of sync calls so makes one round trip per call, not two (TAKE_INBOX, then BLMOVE)."""
        commands = b"".join((
            packed("DEL", self._taken),
            # a timeout that formats as 0 would block for good
            packed("BLMOVE", self._key, self._taken, "LEFT", "RIGHT", f"{max(block_s, 0.001):.3f}"),
            packed("LLEN", self._key),
        ))
        _, item, waiting = round_trip(self._redis, commands, 3)
        self._more = bool(waiting)
        return [] if item is None else [item]

    def _loop(self) -> None:
        while not self.stopping:
            pause = self._yield_until - time.monotonic()
            if pause > 0 and not self._wanted.is_set():
                # a waiter read the inbox itself a moment ago and may do so again at once
                # (a loop of sync calls): stay off it for a moment, unless a waiter found
                # the token taken or is not alone, and now waits to be woken
                self._wanted.wait(pause)
                continue
            msgs: list[bytes] = []
            with self._token:
                if self._yield_until > time.monotonic() and not self._wanted.is_set():
                    continue  # a waiter read meanwhile
                self._wanted.clear()
                try:
                    msgs = self._read(BLOCK_S)
                except READ_ERRORS as err:
                    if self.stopping:
                        return
                    if isinstance(err, redis.ResponseError) and self.down_since is None:
                        log.warning("reading the inbox failed (%s); trying again", err)  # e.g. OOM
                    self._recover = True
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                    self._wake_waiters()  # they check how long Redis has been away
                    pause = 0.2  # e.g. Redis restarting
                else:
                    self.down_since = None
                    if msgs:
                        self._handle(msgs)
                        if self._handoff:
                            # a lone waiter wanted the inbox while we read: what we filed
                            # woke it; from its next wait on, it reads for itself
                            self._handoff = False
                            self._yield_until = time.monotonic() + YIELD_S
            if pause > 0:
                time.sleep(pause)
                continue
            self._housekeep(wait=True)

    def _housekeep(self, wait: bool) -> None:
        """The housekeeping due, by one thread at a time; a waiter (``wait=False``) skips it
        while the inbox thread does it."""
        if self._housekeeping_lock.acquire(blocking=wait):
            try:
                self._handle(None)
            finally:
                self._housekeeping_lock.release()

    def _handle(self, msgs: list[bytes] | None) -> None:
        """File ``msgs``, or (None) do the housekeeping due between batches."""
        try:
            if msgs is not None:
                self._on_messages(msgs)
            else:
                self._housekeeping()
        except Exception:
            if self.stopping:
                return
            log.exception("handling inbox messages failed")
            time.sleep(0.2)

    def read_here(self, timeout: float, stale: Callable[[], bool], alone: bool = True) -> bool:
        """Read the inbox on the calling thread (a waiter in get/wait) for up to ``timeout``
        seconds instead of being woken by the inbox thread: a thread hand-off less on every
        sync call. Returns at once if ``stale()`` says something arrived since the caller
        looked. False, having read nothing, when the inbox thread is reading, Redis is away
        or the caller is not ``alone`` in waiting: wait to be woken instead (the thread
        then reads at once)."""
        if not alone or self.down_since is not None or not self._token.acquire(blocking=False):
            # the thread must read for us (at once, not after a pause); a lone waiter reads
            # for itself again once the thread delivered what it read meanwhile
            self._handoff = alone
            self._wanted.set()
            return False
        try:
            if stale():
                return True
            self._housekeep(wait=False)  # while what we wait for is still on its way
            try:
                msgs = self._read(timeout)
            except READ_ERRORS:
                self._recover = True  # the inbox thread takes it from here
                self._wanted.set()
                return False
            if msgs:
                self._handle(msgs)
            return True
        finally:
            self._yield_until = time.monotonic() + YIELD_S
            self._token.release()
