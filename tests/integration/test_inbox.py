"""The inbox reader never pops a message outright: what it took sits in the process's taken
list until it asks for more, so a reply lost to a dropped connection (a Redis restart, a
failover) costs a message handled twice, never one lost."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from rayr.core.inbox import InboxReader
from rayr.gcs.client import connect, no_retry


class _Collector:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.cond = threading.Condition()

    def on_messages(self, msgs: list[bytes]) -> None:
        with self.cond:
            self.got.extend(msgs)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= count, timeout), self.got
            return list(self.got)


def _reader(redis_url: str, inbox: str, taken: str, collector: _Collector,
            name: str | None = None) -> InboxReader:
    blocking = connect(redis_url, retry=no_retry(), client_name=name)
    reader = InboxReader(blocking_redis=blocking, inbox_key=inbox, taken_key=taken,
                         on_messages=collector.on_messages, housekeeping=lambda: None,
                         wake_waiters=lambda: None)
    reader.start()
    return reader


def _connected(client: Any, name: str) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        ids = [info["id"] for info in client.client_list() if info.get("name") == name]
        if ids:
            return ids
        assert time.monotonic() < deadline, "the reader did not connect again"
        time.sleep(0.01)


def _stop(reader: InboxReader, client: Any, inbox: str) -> None:
    reader.stopping = True
    client.rpush(inbox, b"wake")
    assert reader.join(timeout=10)


def test_messages_left_in_the_taken_list_are_handled_first_then_the_inbox_in_order(redis_url):
    inbox, taken = f"inbox-test:{uuid.uuid4().hex}", f"taken-test:{uuid.uuid4().hex}"
    client = connect(redis_url)
    try:
        # what an earlier read took without its reply arriving
        client.rpush(taken, b"lost-1", b"lost-2")
        client.rpush(inbox, *[f"m{i}".encode() for i in range(3000)])
        collector = _Collector()
        reader = _reader(redis_url, inbox, taken, collector)
        try:
            got = collector.wait_for(3002)
            assert got == [b"lost-1", b"lost-2"] + [f"m{i}".encode() for i in range(3000)]
            client.rpush(inbox, b"late")
            assert collector.wait_for(3003)[-1] == b"late"
            # once more was asked for (the inbox found empty), the handled ones are gone
            deadline = time.monotonic() + 10
            while client.llen(taken) > 1:
                assert time.monotonic() < deadline, client.lrange(taken, 0, -1)
                time.sleep(0.01)
        finally:
            _stop(reader, client, inbox)
    finally:
        client.delete(inbox, taken)
        client.close()


def test_a_dropped_connection_loses_no_message(redis_url):
    """The reader's connection (which never retries on its own) is killed again and again
    while messages stream in: it comes back each time, takes up where it was, and every
    message is handled."""
    inbox, taken = f"inbox-test:{uuid.uuid4().hex}", f"taken-test:{uuid.uuid4().hex}"
    name = f"inbox-reader-{uuid.uuid4().hex[:8]}"
    client = connect(redis_url)
    collector = _Collector()
    reader = _reader(redis_url, inbox, taken, collector, name=name)
    try:
        sent: list[bytes] = []
        for round_ in range(20):
            ids = _connected(client, name)  # the reader is back (it waits 0.2 s after an error)
            batch = [f"r{round_}-{i}".encode() for i in range(300)]
            client.rpush(inbox, *batch)
            sent.extend(batch)
            time.sleep(0.002 * (round_ % 5))  # cut it at different points of its reads
            assert sum(client.client_kill_filter(_id=i) for i in ids) == len(ids)
        deadline = time.monotonic() + 60
        while not set(sent) <= set(collector.got):
            assert time.monotonic() < deadline, f"{len(set(sent) - set(collector.got))} messages lost"
            time.sleep(0.05)
    finally:
        _stop(reader, client, inbox)
        client.delete(inbox, taken)
        client.close()


def test_waiters_reading_the_inbox_themselves_share_it_with_the_thread(redis_url):
    """Waiters (get/wait) read the inbox on their own thread when the inbox thread is not
    in a read, so a sync call needs no thread hand-off. With two waiters and the thread
    taking turns, and the connections killed now and then, every message is handled, in
    order, none twice but across a kill; the waiters did read some themselves."""
    inbox, taken = f"inbox-test:{uuid.uuid4().hex}", f"taken-test:{uuid.uuid4().hex}"
    name = f"inbox-reader-{uuid.uuid4().hex[:8]}"
    client = connect(redis_url)
    collector = _Collector()
    reader = _reader(redis_url, inbox, taken, collector, name=name)
    sent = [f"m{i}".encode() for i in range(3000)]
    done = threading.Event()
    read_here = [0, 0]

    def waiter(slot: int) -> None:
        while not done.is_set():
            before = len(collector.got)
            if reader.read_here(0.05, lambda: False):
                read_here[slot] += len(collector.got) > before
            else:
                time.sleep(0.001)  # the thread reads: it wakes us (here: we poll)

    waiters = [threading.Thread(target=waiter, args=(slot,), daemon=True) for slot in (0, 1)]
    for thread in waiters:
        thread.start()
    try:
        for i in range(0, len(sent), 100):
            for message in sent[i:i + 100]:
                client.rpush(inbox, message)
                if int(message[1:]) % 7 == 0:
                    time.sleep(0.0005)  # sometimes one at a time, sometimes a pile
            if i % 1000 == 500:
                for info in client.client_list():
                    if info.get("name") == name:
                        client.client_kill_filter(_id=info["id"])
        # a kill may have a message handled twice: wait for every one, not for a count
        deadline = time.monotonic() + 60
        while not set(sent) <= set(collector.got) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = list(collector.got)
        assert set(got) == set(sent), f"{len(set(sent) - set(got))} messages lost"
        firsts = [got.index(m) for m in sent]
        assert firsts == sorted(firsts), "messages were handled out of order"
        assert sum(read_here) > 0, "no waiter ever read the inbox itself"
    finally:
        done.set()
        for thread in waiters:
            thread.join(timeout=10)
        _stop(reader, client, inbox)
        client.delete(inbox, taken)
        client.close()


def _blocked(client: Any, name: str) -> bool:
    return any(info.get("name") == name and "b" in info.get("flags", "") for info in client.client_list())


def test_a_message_that_comes_while_the_reader_blocks_costs_one_round_trip(redis_url):
    """A loop of sync calls: each result arrives while the reader blocks on an empty inbox.
    Then each read is one write (empty the taken list, BLMOVE, LLEN): no TAKE_INBOX round
    trip first; and the taken list holds at most the one message being handled."""
    inbox, taken = f"inbox-test:{uuid.uuid4().hex}", f"taken-test:{uuid.uuid4().hex}"
    name = f"inbox-reader-{uuid.uuid4().hex[:8]}"
    client = connect(redis_url)
    collector = _Collector()
    reader = _reader(redis_url, inbox, taken, collector, name=name)
    try:
        scripts_before = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        sent = [f"m{i}".encode() for i in range(20)]
        for i, message in enumerate(sent):
            deadline = time.monotonic() + 30
            while not _blocked(client, name):
                assert time.monotonic() < deadline, "the reader never blocked on the inbox"
                time.sleep(0.002)
            client.rpush(inbox, message)
            collector.wait_for(i + 1)
            assert client.llen(taken) <= 1
        assert collector.got == sent
        scripts = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) - scripts_before
        assert scripts < len(sent) // 2, f"{scripts} TAKE_INBOX round trips for {len(sent)} single messages"
    finally:
        _stop(reader, client, inbox)
        client.delete(inbox, taken)
        client.close()


def test_an_error_reply_does_not_end_the_reader(redis_url):
    """An error reply to the inbox read (here the inbox key holds a string: WRONGTYPE; on a full
    Redis, OOM) is retried like a lost connection: once the key is a list again, messages flow."""
    inbox, taken = f"inbox-test:{uuid.uuid4().hex}", f"taken-test:{uuid.uuid4().hex}"
    client = connect(redis_url)
    client.set(inbox, b"not a list")
    collector = _Collector()
    reader = _reader(redis_url, inbox, taken, collector)
    try:
        deadline = time.monotonic() + 30
        while reader.down_since is None:
            assert time.monotonic() < deadline, "the read never failed"
            time.sleep(0.01)
        client.delete(inbox)
        client.rpush(inbox, b"after")
        assert collector.wait_for(1) == [b"after"]
        assert reader.down_since is None
    finally:
        _stop(reader, client, inbox)
        client.delete(inbox, taken)
        client.close()
