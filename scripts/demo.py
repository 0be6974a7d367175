"""A tour of rayr on an embedded local cluster: tasks, nested tasks, objects, wait.

Run:  python scripts/demo.py
It is a plain Ray Core program: only the import line differs from Ray.
"""

from __future__ import annotations

import random
import time

import numpy as np

import rayr as ray


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
def sum_of_squares(n: int) -> int:
    # a task that submits tasks and waits for them (nested tasks)
    return sum(ray.get([square.remote(i) for i in range(n)]))


@ray.remote
def column_means(matrix: np.ndarray) -> np.ndarray:
    return matrix.mean(axis=0)


@ray.remote
def sleepy(i: int) -> int:
    time.sleep(random.uniform(0.0, 0.3))
    return i


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<46} {1000 * (time.perf_counter() - start):8.1f} ms")
    return result


def main() -> None:
    info = timed("init (start Redis, monitor, raylet)", ray.init)
    print(f"  node {info['node_id'][:12]}, resources {ray.cluster_resources()}")

    print("\nTasks")
    value = timed("first task (includes worker start-up)", lambda: ray.get(square.remote(12)))
    print(f"  square(12) = {value}")
    values = timed("100 tasks", lambda: ray.get([square.remote(i) for i in range(100)]))
    print(f"  sum of squares 0..99 = {sum(values)}")
    nested = timed("nested: 1 task fanning out to 50", lambda: ray.get(sum_of_squares.remote(50)))
    print(f"  sum_of_squares(50) = {nested}")

    print("\nObjects")
    matrix = np.random.default_rng(0).random((2_000, 2_000))  # 32 MB
    ref = timed(f"put a {matrix.nbytes / 1e6:.0f} MB numpy array", lambda: ray.put(matrix))
    view = timed("get it back (zero-copy view)", lambda: ray.get(ref))
    print(f"  equal: {np.array_equal(view, matrix)}, read-only view: {not view.flags.writeable}")
    means = timed("pass it to a task by reference", lambda: ray.get(column_means.remote(ref)))
    print(f"  column means match: {np.allclose(means, matrix.mean(axis=0))}")

    print("\nwait")
    refs = [sleepy.remote(i) for i in range(8)]
    ready, pending = timed("wait for the first 4 of 8", lambda: ray.wait(refs, num_returns=4))
    print(f"  ready: {ray.get(ready)}, still running: {len(pending)}")

    print("\nErrors")

    @ray.remote
    def divide(a: int, b: int) -> float:
        return a / b

    try:
        ray.get(divide.remote(1, 0))
    except ZeroDivisionError as err:
        print("  caught ZeroDivisionError from a task; it is also a RayTaskError: "
              f"{isinstance(err, ray.exceptions.RayTaskError)}")

    timed("shutdown", ray.shutdown)


if __name__ == "__main__":
    main()
