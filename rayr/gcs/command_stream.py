"""Fire-and-forget Redis commands for the hot paths.

A submitter or executor writes its commands to one dedicated connection and goes on
without waiting; a reader thread takes the replies in order and hands each batch to its
callback. Redis executes one connection's commands in the order they were written, so a
result stored before an ACK on this connection is stored before the ACK takes effect, and
a put written before a task that uses it is visible to that task. This removes a round trip
(~0.1 ms) from every task submission and result delivery, and lets many submissions share
the wire without a thread hop on the synchronous path.

A send that follows the previous one within BURST_GAP_S (a loop of ``.remote()`` calls) is
buffered rather than written: the burst goes out in one write when BURST_MAX commands have
gathered, when anyone waits on this process's results (``push``, from ``get``/``wait``), or
at most FLUSH_AFTER_S later (a flusher thread, woken once per burst). Isolated sends, such as
a synchronous ``get(f.remote())``, are written at once.

With ``wait_replicas`` (a Redis with replicas, e.g. behind Sentinel) a write ends with
``WAIT wait_replicas timeout`` (or, while one is on the wire, the next WAIT goes out as soon
as that one is answered: one at a time), and the batches it covers count as answered (their callbacks
run, they leave the resend list) only once WAIT says the replicas have them: a batch the
master acknowledged but a failover lost is resent like one never answered. While replicas
do not acknowledge within the timeout (a slow replica, or none attached just after a
failover) the stream stops waiting for them for DEGRADED_S, then twice as long after each
WAIT in a row that times out (up to DEGRADED_MAX_S), and says so in the log;
the batches answered meanwhile run their callbacks (nothing stalls) but are kept, up to
UNCONFIRMED_MAX_BYTES, until a later WAIT confirms them: a failover in that window resends
them too, so a lagging replica costs duplicates (tasks run at least once), not lost work.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis

from rayr.config import Settings
from rayr.gcs.address import on_cluster, slot_pool
from rayr.gcs.client import REDIS_DOWN_ERRORS, connection_pool, until_reachable

_pack_command: Any
try:  # redis[hiredis] is a dependency; packing with it directly skips redis-py's wrapper
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover
    _pack_command = None

log = logging.getLogger("rayr.commands")

Command = Sequence[Any]
_NO_SCRIPT = redis.exceptions.NoScriptError
Callback = Callable[[list[Any]], None]
# a writer's failed send closes the socket under a read, which may surface as any of these
_READ_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError, ValueError, AttributeError, TypeError)
BURST_GAP_S = 0.0002
JOIN_MAX_BYTES = 1 << 20  # a write's commands up to this size are joined into one buffer
BURST_MAX = 256
FLUSH_AFTER_S = 0.001
POISON_AFTER = 3  # a batch that breaks the connection this many times in a row is failed
DEGRADED_S = 5.0  # after a WAIT timed out, writes go unconfirmed this long before WAIT is tried again
# ... doubled after each WAIT in a row that times out, up to this: a master left without a
# replica (a failover whose old master never returns) would otherwise stall the stream for
# the WAIT timeout every DEGRADED_S, for good
DEGRADED_MAX_S = 60.0
# answered but unconfirmed batches kept for a resend; past this the oldest are dropped (logged)
UNCONFIRMED_MAX_BYTES = 16 << 20
CONFIRM_CHECK_S = 1.0  # how often an idle stream looks for kept batches to confirm
_WAIT_MARK: Any = object()  # the callback slot of a WAIT entry in _waiting
_REPLAY_MARK: Any = object()  # the callback slot of an answered batch resent after a failover


def replicas_to_wait(url: str, settings: Settings) -> int:
    """How many replicas a command stream to ``url`` waits for: the setting, else 1 for a
    Sentinel address (its master has a replica to fail over to), else 0."""
    if settings.redis_wait_replicas is not None:
        return settings.redis_wait_replicas
    return 1 if url.startswith(("redis+sentinel://", "rediss+sentinel://")) else 0


def for_cluster(url: str, settings: Settings) -> CommandStream:
    """The command stream of a driver or worker of the cluster at ``url``."""
    return CommandStream(url, settings.redis_password, replicas_to_wait(url, settings),
                         settings.redis_wait_timeout_ms, cluster_name=settings.cluster_name)


class CommandStream:
    """Write commands now, read their replies on a background thread."""

    def __init__(self, url: str, password: str | None, wait_replicas: int = 0,
                 wait_timeout_ms: int = 500, cluster_name: str | None = None,
                 slot: int | None = None) -> None:
        pool = connection_pool(url, password, cluster_name=cluster_name)
        spread = None if slot is None else slot_pool(pool, slot)  # a Redis Cluster's other master
        self._params = (url, password, wait_replicas, wait_timeout_ms, cluster_name)
        self._on_cluster = on_cluster(pool)
        self._siblings: dict[int, CommandStream] = {}
        self._siblings_lock = threading.Lock()
        self._send_broke: Any = None  # the batch a resend last broke off on, and how often in a row
        self._send_breaks = 0
        pool = spread or pool
        self._wait = [b"WAIT", str(wait_replicas).encode(), str(wait_timeout_ms).encode()]
        self._wait_replicas = wait_replicas
        self._degraded_until = 0.0  # no WAIT before this time: the replicas did not answer
        self._degraded_for = DEGRADED_S  # the next such window
        # one WAIT on the wire at a time (under _lock): WAITs queued behind one that times out
        # would each block the connection for the whole timeout in turn (a burst written
        # while the first waits, just after a failover, stalled for seconds)
        self._wait_in_flight = False
        self._wait_owed = False  # batches went out while one was on the wire: WAIT again after it
        self._last_wait_seq = -1  # the position in the send order of the last WAIT written
        # batches answered while no WAIT confirmed them (reader thread only, then under _cond
        # in a resend): a failover before the next confirmed WAIT resends them
        self._unconfirmed: deque[tuple[int, list[bytes]]] = deque()
        self._unconfirmed_bytes = 0
        self._dropped_unconfirmed = 0  # dropped over the cap since the last confirmed WAIT
        self._conn: Any = pool.make_connection()
        self._conn.connect()
        self._lock = threading.Lock()  # one writer at a time keeps commands whole and ordered
        # batches written but not answered: (commands, callback, packed), resent in order if
        # the connection is lost (a command may then run twice; tasks run at least once)
        self._waiting: deque[tuple[int, Callback | None, list[bytes]]] = deque()
        self._cond = threading.Condition()
        self._sent = 0  # batches written
        self._done = 0  # batches whose replies were read
        self._closed = False
        self._broken = False  # the connection failed; the reader is (about to be) reconnecting
        self._lost = False  # Redis stayed away past RECONNECT_S: unanswered batches were failed
        self._out: list[bytes] = []  # packed commands of a burst, not written yet (under _lock)
        self._last_send = 0.0
        self._burst = threading.Event()  # a burst started buffering: the flusher writes it soon
        # run first thing in every push (and so by the flusher): a submitter's sends it held
        # back during a burst (tasks and actor calls, see TaskSubmitter.flush_held)
        self._before_push: list[Callable[[], None]] = []
        # script body -> SHA1, for the scripts this stream has loaded (SCRIPT LOAD written
        # ahead of their first use, and again first thing on every new connection)
        self._shas: dict[str, str] = {}
        self._reader = threading.Thread(target=self._read_replies, name="rayr-replies", daemon=True)
        self._reader.start()
        self._flusher = threading.Thread(target=self._flush_bursts, name="rayr-flusher", daemon=True)
        self._flusher.start()

    def _by_sha(self, commands: Sequence[Command]) -> Sequence[Command]:
        """``commands`` with each EVAL of a script as EVALSHA: the body (up to ~1 KB) is
        neither sent nor hashed by Redis per call. The first use of a script writes its
        SCRIPT LOAD ahead of it on this connection, where Redis runs it first."""
        out: list[Command] | None = None
        for i, command in enumerate(commands):
            if command[0] != "EVAL":
                continue
            body = command[1]
            sha = self._shas.get(body)
            if sha is None:
                sha = hashlib.sha1(body.encode()).hexdigest()
                self.send([("SCRIPT", "LOAD", body)])
                self._shas[body] = sha  # after the load is written: others may now skip it
            if out is None:
                out = list(commands)
            out[i] = ("EVALSHA", sha, *command[2:])
        return commands if out is None else out

    def _pack(self, commands: Sequence[Command]) -> list[bytes]:
        if _pack_command is not None:
            return [_pack_command(tuple(command)) for command in commands]
        return list(self._conn.pack_commands(commands))

    def send(self, commands: Sequence[Command], callback: Callback | None = None) -> None:
        """Write ``commands``; ``callback(replies)`` runs on the reader thread once they are in.

        A reply that is an error arrives as an exception object in the list.
        """
        if self._lost:
            raise redis.ConnectionError(
                "the command connection to Redis was lost for good (Redis stayed unreachable); "
                "nothing more can be sent from this process"
            )
        packed = self._pack(self._by_sha(commands))
        now = time.perf_counter()
        with self._lock:
            with self._cond:
                self._waiting.append((len(commands), callback, packed))
                self._sent += 1
            if self._broken:
                return  # the reader reconnects and resends everything unanswered, this included
            if self._out or now - self._last_send < BURST_GAP_S:
                self._last_send = now
                self._out.extend(packed)
                if len(self._out) == len(packed):
                    self._burst.set()
                elif len(self._out) >= BURST_MAX:
                    self._write(self._out)
                return
            self._last_send = now
            self._write(packed)

    def _write(self, packed: list[bytes]) -> None:
        """Write ``packed`` (under _lock); ``self._out`` is written and emptied with it. The
        batches in ``packed`` are the last ones in ``_waiting``, so a WAIT appended there
        follows exactly them."""
        if self._wait_replicas and time.monotonic() >= self._degraded_until:
            if self._wait_in_flight:
                self._wait_owed = True
            else:
                wait = self._pack([self._wait])
                with self._cond:
                    self._waiting.append((1, _WAIT_MARK, wait))
                    self._last_wait_seq = self._sent
                    self._sent += 1
                self._wait_in_flight = True
                packed = packed + wait
        if len(packed) > 1 and sum(map(len, packed)) <= JOIN_MAX_BYTES:
            packed = [b"".join(packed)]  # one write: redis-py makes a syscall per command
        try:
            self._conn.send_packed_command(packed, check_health=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # only the reader may connect again (redis-py would do it on our next send,
            # under the reader's feet): it resends this with everything else unanswered
            self._broken = True
        finally:
            self._out = []

    def before_push(self, hook: Callable[[], None]) -> None:
        """Have every push (the flusher's too) call ``hook`` first: it sends what its owner
        held back (``wake_flusher`` makes sure one comes soon)."""
        self._before_push.append(hook)

    def wake_flusher(self) -> None:
        """A push within FLUSH_AFTER_S, for sends a ``before_push`` hook holds back."""
        if not self._burst.is_set():
            self._burst.set()

    def push(self) -> None:
        """Write a buffered burst now (before waiting for anything it leads to), here and on
        the streams ``for_slot`` made."""
        for hook in self._before_push:
            hook()
        if self._out:
            with self._lock:
                if self._out and not self._broken:
                    self._write(self._out)
        if self._siblings:
            with self._siblings_lock:
                siblings = list(self._siblings.values())
            for sibling in siblings:
                sibling.push()

    def _flush_bursts(self) -> None:
        while not self._closed:
            # with replicas, wake now and then: kept batches may need a WAIT of their own
            if not self._burst.wait(CONFIRM_CHECK_S if self._wait_replicas else None):
                if self._unconfirmed:
                    self._confirm_idle()
                continue
            self._burst.clear()
            time.sleep(FLUSH_AFTER_S)  # let the burst gather; its writer may push it first
            self.push()

    def _confirm_idle(self) -> None:
        """Batches kept unconfirmed and nothing written since: a lone WAIT (once the degraded
        window is over) confirms them, so a later failover does not run them again."""
        if self._closed or time.monotonic() < self._degraded_until:
            return
        with self._lock:
            if not self._broken:
                self._write(self._out)  # a buffered burst, if any, then the WAIT

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every batch written so far has its replies (on the streams ``for_slot``
        made first, whose replies may write more here); False on timeout."""
        with self._siblings_lock:
            siblings = list(self._siblings.values())
        for sibling in siblings:
            sibling.flush(timeout)
        self.push()
        with self._cond:
            target = self._sent
            # the reader may be idle: it is not woken per send (a wake-up per task costs more
            # than reading the replies of many sends at once), so wake it now
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or self._closed, timeout)

    def _read_replies(self) -> None:
        last_head: object = None  # the batch at the head when the connection last broke
        broke_on_head = 0  # how many times in a row the connection broke with it at the head
        # batches whose replies are read but which wait for the WAIT written after them (they
        # stay at the head of _waiting, so a broken connection resends them)
        held: list[tuple[Callback | None, list[Any]]] = []
        # with replicas to wait for, a batch no WAIT follows was written while degraded
        keep = bool(self._wait_replicas)
        while True:
            with self._cond:
                while len(self._waiting) <= len(held) and not self._closed:
                    self._cond.wait(0.5)
                if self._closed and len(self._waiting) <= len(held):
                    return
                count, callback, _ = self._waiting[len(held)]
            replies: list[Any] = []
            try:
                for _ in range(count):
                    try:
                        replies.append(self._conn.read_response(disable_decoding=True))
                    except redis.ResponseError as err:  # an error reply, already consumed
                        if isinstance(err, _NO_SCRIPT):
                            # the script cache was flushed under us (SCRIPT FLUSH): as after a
                            # lost connection, reconnect, load the scripts again and resend
                            # from this batch on
                            raise redis.ConnectionError(f"Redis lost this stream's scripts: {err}") from err
                        replies.append(err)
            except _READ_ERRORS as err:
                head = self._waiting[len(held)]
                broke_on_head = broke_on_head + 1 if head is last_head else 1
                last_head = head
                if broke_on_head >= POISON_AFTER and not self._closed:
                    # the same batch broke the connection again and again (e.g. a value Redis
                    # refuses to parse): fail it rather than resend it forever (the batches
                    # before it were answered, if not confirmed: they are done too)
                    log.error("a batch of %d Redis commands broke the connection %d times; "
                              "failing it: %s", count, broke_on_head, err)
                    for held_callback, held_replies in held:
                        self._finish_batch(held_callback, held_replies)
                    self._finish_batch(None if callback is _WAIT_MARK else callback, [redis.ConnectionError(
                        f"Redis dropped the connection on this command {broke_on_head} times: {err}"
                    )] * count)
                held = []  # unconfirmed: resent with everything else
                if self._closed or not self._reconnect():
                    self._give_up()
                    return
                continue
            if callback is _WAIT_MARK:
                self._confirmed(held, replies[0])
                held = []
                self._wait_answered()
            elif self._last_wait_seq > self._done + len(held):  # a WAIT written after it confirms it
                held.append((callback, replies))
            else:
                self._finish_batch(callback, replies, keep=keep)

    def _wait_answered(self) -> None:
        """The WAIT on the wire was answered: the batches written meanwhile get one of their own
        now, before their replies are read (so they are held for it), unless degraded."""
        with self._lock:
            self._wait_in_flight = False
            owed, self._wait_owed = self._wait_owed, False
            if owed and not self._broken and time.monotonic() >= self._degraded_until:
                self._write(self._out)  # a buffered burst, if any, then the WAIT

    def _confirmed(self, held: list[tuple[Callback | None, list[Any]]], acked: Any) -> None:
        """A WAIT answered: the batches before it are done, replicated unless it timed out
        (then they are kept for a resend until a later WAIT confirms them)."""
        short = isinstance(acked, int) and acked < self._wait_replicas
        if short:
            self._degraded_until = time.monotonic() + self._degraded_for
            log.warning("Redis replicas acknowledged %s of %d writes' copies within the timeout; writes "
                        "go unconfirmed for %.0f s (kept for a resend should the master fail over)",
                        acked, self._wait_replicas, self._degraded_for)
            self._degraded_for = min(self._degraded_for * 2, DEGRADED_MAX_S)
        else:
            self._degraded_for = DEGRADED_S
            # WAIT counts every write this connection made before it
            self._unconfirmed.clear()
            self._unconfirmed_bytes = 0
            self._dropped_unconfirmed = 0
        for callback, replies in held:
            self._finish_batch(callback, replies, keep=short)
        with self._cond:
            self._waiting.popleft()  # the WAIT itself
            self._done += 1
            self._cond.notify_all()

    def _finish_batch(self, callback: Callback | None, replies: list[Any], keep: bool = False) -> None:
        """Hand the head batch its replies and take it off the unanswered list (``keep``: no
        replica confirmed it, so it stays among the batches a failover resends)."""
        if callback is _REPLAY_MARK:
            pass  # a resent batch whose first replies were handed out already
        elif callback is not None:
            try:
                callback(replies)
            except Exception:
                log.exception("reply callback failed")
        elif any(isinstance(reply, Exception) for reply in replies):
            # nobody waits for these replies: an error must at least be seen
            log.error("Redis refused a command: %s", next(r for r in replies if isinstance(r, Exception)))
        with self._cond:
            count, _, packed = self._waiting.popleft()
            self._done += 1
            self._cond.notify_all()
        if keep:
            self._keep_unconfirmed(count, packed)

    def _keep_unconfirmed(self, count: int, packed: list[bytes]) -> None:
        self._unconfirmed.append((count, packed))
        self._unconfirmed_bytes += sum(len(part) for part in packed)
        while self._unconfirmed_bytes > UNCONFIRMED_MAX_BYTES and len(self._unconfirmed) > 1:
            _, dropped = self._unconfirmed.popleft()
            self._unconfirmed_bytes -= sum(len(part) for part in dropped)
            if not self._dropped_unconfirmed:
                log.warning("more than %d MiB of writes await a replica's confirmation; dropping the "
                            "oldest from the resend list (a failover now could lose them)",
                            UNCONFIRMED_MAX_BYTES >> 20)
            self._dropped_unconfirmed += 1

    def _give_up(self) -> None:
        """Redis stayed away: every unanswered batch gets an error reply, and later sends
        raise, so no command is lost without anyone hearing of it."""
        if self._closed:
            with self._cond:
                self._waiting.clear()
                self._cond.notify_all()
            return
        log.error("lost the command connection to Redis for good; %d batches of commands failed",
                  len(self._waiting))
        self._lost = True
        while self._waiting:
            count, callback, _ = self._waiting[0]
            self._finish_batch(callback, [redis.ConnectionError("Redis could not be reached again")] * count)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _reconnect(self) -> bool:
        """Connect again (with backoff, for up to RECONNECT_S) and resend every unanswered
        batch in order; False if Redis stayed away or we were closed meanwhile."""
        log.warning("lost the command connection to Redis; reconnecting")
        with self._lock:  # no new batch is written until the old ones are resent
            self._broken = True
            self._out = []  # they are among the unanswered batches resent below
            try:
                resent = until_reachable(self._resend, "reconnecting the command stream")
            except REDIS_DOWN_ERRORS:
                return False
            self._broken = not resent
            return resent

    def _resend(self) -> bool:
        if self._closed:
            return False
        self._conn.disconnect()
        self._conn.connect()
        with self._cond:
            self._replay_unconfirmed()
            self._one_wait_at_the_end()
            self._load_scripts_first()
            unanswered = [packed for _, _, packed in self._waiting]
        written = 0
        try:
            for packed in unanswered:
                self._conn.send_packed_command(packed, check_health=False)
                written += 1
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._count_send_break(written)
            raise  # until_reachable tries the resend again
        log.warning("command connection to Redis is back; %d batches resent", len(unanswered))
        return True

    def _count_send_break(self, index: int) -> None:
        """A resend broke off while writing batch ``index`` of ``_waiting``. Redis closes the
        connection on a value it refuses as soon as it sees it, often before the replies of
        what came first reach us, so the reader's count never blames it and the resend would
        be retried until RECONNECT_S, then everything failed. The same batch breaking the
        write POISON_AFTER times in a row is failed instead, and as many PINGs take its place
        (same position and reply count, replies dropped) so that the rest goes through."""
        with self._cond:
            entry = self._waiting[index]
            same = entry is self._send_broke
            self._send_broke, self._send_breaks = entry, (self._send_breaks + 1 if same else 1)
            count, callback, _ = entry
            if self._send_breaks < POISON_AFTER or callback is _WAIT_MARK or callback is _REPLAY_MARK:
                return
            self._waiting[index] = (count, _REPLAY_MARK, self._pack([("PING",)] * count))
            self._send_broke, self._send_breaks = None, 0
        log.error("a batch of %d Redis commands broke the connection %d times while being written; "
                  "failing it", count, POISON_AFTER)
        if callback is not None:
            error = redis.ConnectionError(f"Redis dropped the connection on this command {POISON_AFTER} "
                                          "times")
            try:
                callback([error] * count)
            except Exception:
                log.exception("reply callback failed")

    def _replay_unconfirmed(self) -> None:
        """Before a resend (under _cond): the answered batches no replica confirmed go first,
        in their order; the new master may lack them. Their replies are read and dropped."""
        if not self._unconfirmed:
            return
        replays = [(count, _REPLAY_MARK, packed) for count, packed in self._unconfirmed]
        self._waiting.extendleft(reversed(replays))
        # positions are _done + index: the replays sit before the unanswered batches
        self._done -= len(replays)
        self._unconfirmed.clear()
        self._unconfirmed_bytes = 0

    def _load_scripts_first(self) -> None:
        """Before a resend (under _cond): SCRIPT LOAD of every script this stream uses goes
        first, since a restarted or failed-over Redis may have none of them. Their replies
        are read and dropped."""
        loads = [(1, _REPLAY_MARK, self._pack([("SCRIPT", "LOAD", body)])) for body in list(self._shas)]
        self._waiting.extendleft(reversed(loads))
        self._done -= len(loads)  # positions are _done + index, as for the replays

    def _one_wait_at_the_end(self) -> None:
        """Before a resend (under _cond): one WAIT after all the batches instead of one per
        earlier write. A new master often has no replica yet, and each WAIT would then block
        the connection for the whole timeout."""
        kept = deque(entry for entry in self._waiting if entry[1] is not _WAIT_MARK)
        # the dropped WAITs count as answered: positions (_done + index) only move later
        self._waiting, self._done = kept, self._done + len(self._waiting) - len(kept)
        self._last_wait_seq = -1
        self._wait_in_flight = self._wait_owed = False
        if kept and self._wait_replicas and time.monotonic() >= self._degraded_until:
            self._last_wait_seq = self._done + len(kept)
            kept.append((1, _WAIT_MARK, self._pack([self._wait])))
            self._sent += 1
            self._wait_in_flight = True

    def for_slot(self, slot: int) -> CommandStream:
        """The stream for keys in ``slot``: on a Redis Cluster one of its own to the master
        serving it (made on first use, closed with this one; ordered only within itself), on
        any other Redis this one."""
        if not self._on_cluster:
            return self
        with self._siblings_lock:
            sibling = self._siblings.get(slot)
            if sibling is None:
                sibling = self._siblings[slot] = CommandStream(*self._params, slot=slot)
            return sibling

    def close(self) -> None:
        with self._siblings_lock:
            siblings = list(self._siblings.values())
        for sibling in siblings:
            sibling.close()
        self.flush(timeout=2.0)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._burst.set()  # the flusher sees we are closed and ends
        try:
            self._conn.disconnect()
        except Exception:
            pass
        self._reader.join(timeout=2)
