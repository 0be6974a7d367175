"""Tasks, ObjectRefs and ``wait``: start work, take results as they finish, not in order.

    python examples/tasks_and_wait.py
"""

from __future__ import annotations

import time

import rayr as ray


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@ray.remote
def total(values: list[int]) -> int:
    # a task may submit tasks of its own; its CPU is lent back while it waits in get()
    return sum(ray.get([square.remote(v) for v in values]))


def main() -> None:
    ray.init(num_cpus=4)  # no cluster running: starts one here that stops with this script

    refs = [square.remote(i) for i in range(10)]  # returns at once: ObjectRefs, not values
    print("squares:", ray.get(refs))

    # an ObjectRef passed to a task is resolved to its value before the task runs
    print("sum of squares of 1..4:", ray.get(total.remote([1, 2, 3, 4])))

    # wait() splits refs into (ready, not ready): take the first two to finish
    pending = [slow.remote(s) for s in (0.6, 0.05, 0.3, 0.1)]
    ready, pending = ray.wait(pending, num_returns=2)
    print("first two done:", sorted(ray.get(ready)))
    ready, pending = ray.wait(pending, num_returns=len(pending), timeout=5)
    print("the rest:", sorted(ray.get(ready)), "still pending:", len(pending))

    # get() with a timeout raises GetTimeoutError (a TimeoutError) instead of blocking for good
    try:
        ray.get(slow.remote(2), timeout=0.1)
    except ray.exceptions.GetTimeoutError:
        print("timed out as asked")

    ray.shutdown()


if __name__ == "__main__":
    main()
