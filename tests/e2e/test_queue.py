"""rayr.util.queue.Queue end to end: FIFO, limits, timeouts, batches, tasks and actors, shutdown."""

from __future__ import annotations

import asyncio
import pickle
import queue as std_queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rayr
from rayr.exceptions import ActorDiedError
from rayr.util.queue import Empty, Full, Queue


@pytest.fixture
def make_queue(ray: Any) -> Iterator[Any]:
    """Builds queues and shuts them down after the test, so actor processes do not pile up."""
    made: list[Queue] = []

    def make(*args: Any, **kwargs: Any) -> Queue:
        q = Queue(*args, **kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        q.shutdown(force=True)


def test_exceptions_subclass_the_standard_ones() -> None:
    assert issubclass(Empty, std_queue.Empty) and issubclass(Full, std_queue.Full)
    assert not issubclass(Empty, Full)


def test_fifo_and_sizes(make_queue: Any) -> None:
    q = make_queue()
    assert q.empty() and not q.full() and q.size() == 0 and q.qsize() == 0 and len(q) == 0
    for i in range(10):
        q.put(i)
    q.put({"nested": [1, 2]})
    assert q.size() == 11 and q.qsize() == 11 and len(q) == 11 and not q.empty()
    assert not q.full(), "an unbounded queue is never full"
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.get_nowait() == {"nested": [1, 2]}
    assert q.empty()


def test_large_items_round_trip(make_queue: Any) -> None:
    q = make_queue()
    blob = bytes(range(256)) * 1024  # over the inline threshold: travels through the object store
    q.put(blob)
    assert q.get(timeout=10) == blob


def test_maxsize_and_full(make_queue: Any) -> None:
    q = make_queue(maxsize=2)
    q.put("a")
    q.put_nowait("b")
    assert q.full() and q.size() == 2
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(std_queue.Full):
        q.put("c", block=False)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put("c", timeout=0.3)
    assert 0.25 < time.monotonic() - start < 3
    assert q.size() == 2, "a failed put must not add the item"
    assert q.get() == "a"
    q.put("c", timeout=0)  # room now: a zero timeout still succeeds
    assert q.get_nowait_batch(2) == ["b", "c"]


def test_get_on_empty_queue(make_queue: Any) -> None:
    q = make_queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(std_queue.Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(timeout=0)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert 0.25 < time.monotonic() - start < 3
    q.put(1)
    assert q.get(timeout=0) == 1


def test_argument_checks(make_queue: Any) -> None:
    q = make_queue()
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-0.5)
    with pytest.raises(ValueError, match="nonnegative"):
        q.get_nowait_batch(-1)
    with pytest.raises(TypeError):
        q.get_nowait_batch(1.5)
    with pytest.raises(TypeError, match="Iterable"):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        Queue(maxsize="3")
    assert q.empty(), "rejected calls must not touch the queue"


def test_batches_are_all_or_nothing(make_queue: Any) -> None:
    q = make_queue(maxsize=5)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full, match="Cannot add 3 items"):
        q.put_nowait_batch([4, 5, 6])
    assert q.size() == 3, "a batch that does not fit adds nothing"
    q.put_nowait_batch(iter([4, 5]))
    assert q.full()
    with pytest.raises(Empty, match="Cannot get 6 items"):
        q.get_nowait_batch(6)
    assert q.size() == 5, "a batch that cannot be served removes nothing"
    assert q.get_nowait_batch(0) == []
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(3) == [3, 4, 5]
    with pytest.raises(Empty):
        q.get_nowait_batch(1)
    unbounded = make_queue()
    unbounded.put_nowait_batch(range(1000))
    assert unbounded.size() == 1000 and unbounded.get_nowait_batch(1000) == list(range(1000))


def test_blocked_get_is_woken_by_put(make_queue: Any) -> None:
    q = make_queue()

    @rayr.remote
    def consume(queue: Queue) -> Any:
        return queue.get(timeout=20)

    ref = consume.remote(q)
    ready, _ = rayr.wait([ref], timeout=0.5)
    assert ready == [], "get must wait while the queue is empty"
    q.put("hello")
    assert rayr.get(ref, timeout=20) == "hello"
    assert q.empty()


def test_blocked_put_is_woken_by_get(make_queue: Any) -> None:
    q = make_queue(maxsize=1)
    q.put("first")

    @rayr.remote
    def produce(queue: Queue) -> str:
        queue.put("second", timeout=20)
        return "put done"

    ref = produce.remote(q)
    ready, _ = rayr.wait([ref], timeout=0.5)
    assert ready == [], "put must wait while the queue is full"
    assert q.get() == "first"
    assert rayr.get(ref, timeout=20) == "put done"
    assert q.get(timeout=5) == "second"


def test_many_blocked_getters_wait_at_once(make_queue: Any) -> None:
    q = make_queue()
    n = 30

    async def scenario() -> list[int]:
        getters = [asyncio.ensure_future(q.get_async(timeout=15)) for _ in range(n)]
        await asyncio.sleep(0.5)  # every get is now waiting in the actor
        # served only if the actor is still taking calls while all n gets wait
        q.put_nowait_batch(range(n))
        return list(await asyncio.gather(*getters))

    assert sorted(asyncio.run(scenario())) == list(range(n))
    assert q.empty()


def test_async_variants(make_queue: Any) -> None:
    q = make_queue(maxsize=1)

    async def scenario() -> Any:
        await q.put_async("x")
        with pytest.raises(Full):
            await q.put_async("y", block=False)
        with pytest.raises(Full):
            await q.put_async("y", timeout=0.1)
        value = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return value

    assert asyncio.run(scenario()) == "x"
    assert q.empty()


@rayr.remote
class Consumer:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def take(self, n: int) -> list[Any]:
        return [self.queue.get(timeout=20) for _ in range(n)]

    def offer(self, item: Any) -> None:
        self.queue.put_nowait(item)


def test_producer_task_and_consumer_actor(make_queue: Any) -> None:
    q = make_queue(maxsize=3)  # smaller than the stream: the producer must block on a full queue

    @rayr.remote
    def produce(queue: Queue, n: int) -> int:
        for i in range(n):
            queue.put(i, timeout=20)
        return n

    consumer = Consumer.remote(q)
    taken = consumer.take.remote(20)
    produced = produce.remote(q, 20)
    assert rayr.get(taken, timeout=60) == list(range(20))
    assert rayr.get(produced, timeout=60) == 20
    rayr.get(consumer.offer.remote("from the actor"))
    assert q.get_nowait() == "from the actor"
    rayr.kill(consumer)


def test_queue_made_in_a_task_works_in_the_driver(ray: Any) -> None:
    @rayr.remote
    def make() -> Queue:
        q = Queue(maxsize=4)
        q.put_nowait_batch(["made", "in", "a", "task"])
        return q

    q = rayr.get(make.remote(), timeout=60)
    try:
        assert q.maxsize == 4 and q.full()
        assert q.get_nowait_batch(4) == ["made", "in", "a", "task"]
        clone = pickle.loads(pickle.dumps(q))
        clone.put(1)
        assert q.get() == 1, "a copy works on the same queue"
    finally:
        q.shutdown(force=True)


def test_actor_options(make_queue: Any) -> None:
    q = make_queue(actor_options={"name": "test-queue", "num_cpus": 0})
    q.put("named")
    found = rayr.get_actor("test-queue")
    assert found == q.actor
    assert rayr.get(found.qsize.remote()) == 1
    with pytest.raises(ValueError, match="Invalid option"):
        Queue(actor_options={"bogus": 1})


def test_shutdown(make_queue: Any) -> None:
    q = make_queue()
    q.put("item")
    holder = Consumer.remote(q)
    rayr.get(holder.offer.remote("via copy"))
    assert q.size() == 2
    handle = q.actor

    @rayr.remote
    def blocked_get(queue: Queue) -> Any:
        return queue.get(timeout=30)

    q2 = make_queue()
    waiting = blocked_get.remote(q2)
    time.sleep(0.3)

    start = time.monotonic()
    q.shutdown()
    assert time.monotonic() - start < 4, "a graceful shutdown need not wait out the grace period"
    assert q.actor is None
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)
    with pytest.raises(ActorDiedError):
        rayr.get(handle.qsize.remote(), timeout=10)
    with pytest.raises(ActorDiedError):
        rayr.get(holder.take.remote(1), timeout=20)  # the copy the actor holds is dead too
    q.shutdown()  # again: nothing to do

    q2.shutdown(force=True)
    with pytest.raises(ActorDiedError):
        rayr.get(waiting, timeout=20)  # a caller blocked in get fails instead of hanging
    rayr.kill(holder)
