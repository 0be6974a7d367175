"""The guarantee across a Sentinel failover, made deterministic: the replica's link is cut
before a write, so the master acknowledges a write the replica never gets, and then dies.
With WAIT (rayr's default behind Sentinel) the command stream resends the unconfirmed batch to
the promoted replica; without it the write is lost, as Redis's asynchronous replication allows."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rayr.gcs.client import WAIT_TIMEOUT_MS, GcsClient, connect
from rayr.gcs.command_stream import DEGRADED_S, CommandStream
from rayr.keys import Keys
from rayr.testing_redis import SentinelSet

PASSWORD = "guarantee-pw"


def _cut_replication(sentinels: SentinelSet) -> None:
    """The replica stops receiving the master's writes (and cannot reconnect: wrong masterauth)."""
    replica, master = sentinels.replica.client(), sentinels.master.client()
    try:
        replica.config_set("masterauth", "not-the-password")
        master.client_kill_filter(_type="replica")
        deadline = time.monotonic() + 30
        while replica.info("replication").get("master_link_status") == "up":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        replica.close()
        master.close()


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_write_acknowledged_but_not_replicated_is_resent_only_with_wait(sentinels, wait_replicas):
    stream = CommandStream(sentinels.url, PASSWORD, wait_replicas=wait_replicas, wait_timeout_ms=60_000)
    try:
        stream.send([("SET", "before", "1")])
        assert stream.flush(timeout=30)  # replicated while the link was up
        _cut_replication(sentinels)
        stream.send([("RPUSH", "lost-or-not", "x")])
        master = sentinels.master.client()
        deadline = time.monotonic() + 30
        while not master.exists("lost-or-not"):  # the master has it...
            assert time.monotonic() < deadline
            time.sleep(0.01)
        master.close()
        # ... and with WAIT the stream does not count it done: no replica confirmed it
        assert stream.flush(timeout=2) == (not wait_replicas)
        sentinels.master.kill()
        deadline = time.monotonic() + 60
        while sentinels.current_master() != ("127.0.0.1", sentinels.replica.port):
            assert time.monotonic() < deadline, "the Sentinels did not promote the replica"
            time.sleep(0.05)
        promoted = sentinels.replica.client()
        try:
            assert promoted.get("before") == b"1"
            if wait_replicas:  # resent by the stream once it reached the new master
                deadline = time.monotonic() + 60
                while promoted.lrange("lost-or-not", 0, -1) != [b"x"]:
                    assert time.monotonic() < deadline, "the unconfirmed write was not resent"
                    time.sleep(0.05)
            else:  # answered by the old master, gone with it: what WAIT prevents
                time.sleep(3)  # time the stream would have had to resend it
                assert not promoted.exists("lost-or-not")
        finally:
            promoted.close()
    finally:
        stream.close()


def _promoted(sentinels: SentinelSet) -> None:
    deadline = time.monotonic() + 60
    while sentinels.current_master() != ("127.0.0.1", sentinels.replica.port):
        assert time.monotonic() < deadline, "the Sentinels did not promote the replica"
        time.sleep(0.05)


def test_writes_made_while_the_replica_lags_are_resent_after_a_failover(sentinels):
    """A WAIT that times out puts the stream in its degraded mode (no WAIT for a while, so a
    slow or missing replica does not stall every write); what it answers meanwhile is kept,
    and a failover resends it: the one that timed out and the ones written without WAIT."""
    stream = CommandStream(sentinels.url, PASSWORD, wait_replicas=1, wait_timeout_ms=300)
    try:
        stream.send([("SET", "before", "1")])
        assert stream.flush(timeout=30)
        _cut_replication(sentinels)
        stream.send([("RPUSH", "kept", "timed-out")])
        assert stream.flush(timeout=30)  # answered once the WAIT gave up: nothing stalls
        stream.send([("RPUSH", "kept", "degraded")])
        assert stream.flush(timeout=30)
        sentinels.master.kill()
        _promoted(sentinels)
        promoted = sentinels.replica.client()
        try:
            assert promoted.get("before") == b"1"
            deadline = time.monotonic() + 60
            while promoted.lrange("kept", 0, -1) != [b"timed-out", b"degraded"]:
                assert time.monotonic() < deadline, promoted.lrange("kept", 0, -1)
                time.sleep(0.05)
        finally:
            promoted.close()
    finally:
        stream.close()


def test_a_later_wait_confirms_what_a_lagging_replica_caught_up_on(sentinels):
    """The replica stalls (SIGSTOP) past the WAIT timeout, then catches up. Once the degraded
    window ends, an idle stream WAITs on its own and, confirmed, forgets the kept batch: a
    failover after that does not run the write twice."""
    stream = CommandStream(sentinels.url, PASSWORD, wait_replicas=1, wait_timeout_ms=300)
    replica = sentinels.replica.proc
    try:
        stream.send([("SET", "before", "1")])
        assert stream.flush(timeout=30)
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            stream.send([("RPUSH", "once", "x")])
            assert stream.flush(timeout=30)
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        time.sleep(DEGRADED_S + 2)  # the stream's own WAIT, answered by the caught-up replica
        sentinels.master.kill()
        _promoted(sentinels)
        promoted = sentinels.replica.client()
        try:
            time.sleep(3)  # time a resend would have had to arrive
            assert promoted.lrange("once", 0, -1) == [b"x"]
        finally:
            promoted.close()
    finally:
        stream.close()


def test_a_registration_waits_for_the_replica_whatever_connection_made_it(sentinels, caplog):
    """``durable()`` runs its WAIT on some pooled connection; WAIT alone covers only that
    connection's writes, so one that wrote nothing was confirmed at once while the replica
    lagged. With the replica stalled, a write made on another connection must not count as
    replicated: the WAIT times out and says so."""
    gcs = GcsClient(connect(sentinels.url, PASSWORD), Keys("durable-test"))
    other = connect(sentinels.url, PASSWORD)
    replica = sentinels.replica.proc
    try:
        assert gcs.wait_replicas == 1
        gcs.durable()  # replica in sync: confirmed
        assert "did not acknowledge" not in caplog.text
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            other.set("registered-elsewhere", "1")
            start = time.monotonic()
            gcs.durable()
            assert time.monotonic() - start >= WAIT_TIMEOUT_MS / 1000 * 0.9
            assert "did not acknowledge a registration" in caplog.text
        finally:
            os.kill(replica.pid, signal.SIGCONT)
    finally:
        gcs.r.close()
        other.close()
