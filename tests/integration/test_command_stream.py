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
