"""The command stream: writes now, replies read on its own thread, in order."""

from __future__ import annotations

import time

from rayr.gcs.client import connect
from rayr.gcs.command_stream import CommandStream


def test_replies_arrive_in_order_and_flush_is_prompt_after_idling(redis_url):
    stream = CommandStream(redis_url, None)
    got: list[list] = []
    try:
        for i in range(50):
            stream.send([("SET", f"cs-test:{i}", i), ("INCR", "cs-test:n")], got.append)
        assert stream.flush(timeout=10)
        assert [r[1] for r in got] == list(range(1, 51))
        time.sleep(0.7)  # the reader has gone idle (it is not woken per send)
        start = time.monotonic()
        stream.send([("INCR", "cs-test:n")], got.append)
        assert stream.flush(timeout=10)
        assert time.monotonic() - start < 0.2, "flush waited for the idle reader's timeout"
        assert got[-1] == [51]
    finally:
        stream.close()
        client = connect(redis_url)
        client.delete("cs-test:n", *[f"cs-test:{i}" for i in range(50)])
        client.close()


def test_a_command_that_breaks_the_connection_is_failed_and_nothing_else_is_lost(tmp_path):
    """Redis drops the connection on a value over proto-max-bulk-len: resending it forever (or
    dropping everything pending) lost commands; it alone must fail, with an error to its sender."""
    from rayr import procs
    from rayr.node import free_port, start_redis

    port = free_port()
    proc = start_redis(port, workdir=str(tmp_path))
    url = f"redis://127.0.0.1:{port}"
    client = connect(url)
    client.config_set("proto-max-bulk-len", 1 << 20)  # the smallest Redis allows
    stream = CommandStream(url, None)
    got: dict[str, list] = {}
    try:
        stream.send([("SET", "before", 1)], lambda r: got.__setitem__("before", r))
        stream.send([("SET", "huge", b"x" * (2 << 20))], lambda r: got.__setitem__("huge", r))
        stream.send([("SET", "after", 2)], lambda r: got.__setitem__("after", r))
        assert stream.flush(timeout=60)
        assert isinstance(got["huge"][0], Exception)
        assert got["before"] == [b"OK"] and got["after"] == [b"OK"]
        assert client.get("before") == b"1" and client.get("after") == b"2"
        assert not client.exists("huge")
        stream.send([("INCR", "later")], lambda r: got.__setitem__("later", r))
        assert stream.flush(timeout=10) and got["later"] == [1]
    finally:
        stream.close()
        client.close()
        procs.stop([proc])


def test_scripts_go_by_sha_and_survive_a_script_flush(redis_url):
    """A script's body goes over the wire once (SCRIPT LOAD), then EVALSHA; when the script
    cache is flushed under the stream, it reconnects, loads again and resends, in order."""
    script = "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    stream = CommandStream(redis_url, None)
    client = connect(redis_url)
    got: list[list] = []
    try:
        for i in range(20):
            stream.send([("EVAL", script, 1, "cs-script:list", i)], got.append)
        assert stream.flush(timeout=10)
        assert [r[0] for r in got] == list(range(1, 21))
        calls = client.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] >= 20, calls
        client.script_flush()
        for i in range(20, 40):
            stream.send([("EVAL", script, 1, "cs-script:list", i)], got.append)
        assert stream.flush(timeout=30)
        assert not any(isinstance(r[0], Exception) for r in got), got
        # each element exactly once or, where a batch was resent, in order again: what
        # counts is that nothing is missing and the last ones came last
        values = [int(v) for v in client.lrange("cs-script:list", 0, -1)]
        assert set(values) == set(range(40)) and values[-1] == 39
    finally:
        stream.close()
        client.delete("cs-script:list")
        client.close()


def test_a_master_without_replicas_is_waited_on_less_and_less(redis_url, monkeypatch):
    """With a replica to wait for and none attached (a failover whose old master never came
    back), each WAIT stalls the stream for its timeout; the degraded windows between them
    double, so the stalls thin out instead of coming every DEGRADED_S for good."""
    from rayr.gcs import command_stream

    monkeypatch.setattr(command_stream, "DEGRADED_S", 0.1)
    monkeypatch.setattr(command_stream, "DEGRADED_MAX_S", 1.6)
    r = connect(redis_url)
    waits_before = int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    stream = CommandStream(redis_url, None, wait_replicas=1, wait_timeout_ms=50)
    try:
        sent = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:  # one write at a time: each may carry a WAIT
            stream.send([("INCR", "rayr-test-no-replica")])
            sent += 1
            assert stream.flush(timeout=30)
            time.sleep(0.01)
        waits = int(r.info("commandstats")["cmdstat_wait"]["calls"]) - waits_before
        # windows of 0.1, 0.2, 0.4, 0.8, 1.6, 1.6 s, each after a 50 ms stall: about 6 WAITs
        # in 4 s (with fixed 0.1 s windows it would be ~27)
        assert 2 <= waits <= 9, waits
        assert int(r.get("rayr-test-no-replica")) == sent  # every write went through meanwhile
    finally:
        stream.close()
        r.delete("rayr-test-no-replica")
        r.close()


def test_a_burst_written_while_a_wait_is_out_adds_no_wait_of_its_own(redis_url, monkeypatch):
    """Writes made while a WAIT is on the wire are covered by the next one, sent when it is
    answered: one WAIT at a time. Queued behind one that times out (a replica-less master),
    a WAIT per write would block the connection for the timeout each, in turn."""
    from rayr.gcs import command_stream

    monkeypatch.setattr(command_stream, "DEGRADED_S", 30.0)  # one window: after the first timeout
    r = connect(redis_url)
    waits_before = int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    stream = CommandStream(redis_url, None, wait_replicas=1, wait_timeout_ms=300)
    try:
        for _ in range(40):  # ~80 ms of separate writes while the first WAIT waits 300 ms
            stream.send([("INCR", "rayr-test-burst-wait")])
            time.sleep(0.002)
        assert stream.flush(timeout=60)
        waits = int(r.info("commandstats")["cmdstat_wait"]["calls"]) - waits_before
        assert waits == 1, waits  # the first timed out: degraded, no WAIT was owed after it
        assert int(r.get("rayr-test-burst-wait")) == 40
    finally:
        stream.close()
        r.delete("rayr-test-burst-wait")
        r.close()
