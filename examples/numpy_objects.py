"""Large numpy arrays: put once, read everywhere without copies.

Values above 100 KiB go to the node's shared-memory object store; ``get`` returns a read-only
array that maps the store's memory directly (no copy, however large).

    python examples/numpy_objects.py
"""

from __future__ import annotations

import time

import numpy as np

import rayr as ray


@ray.remote
def column_means(matrix: np.ndarray) -> np.ndarray:
    # the task reads the same shared memory the driver wrote: no copy, no pickling of the data
    return matrix.mean(axis=0)


@ray.remote
def scaled(matrix: np.ndarray, factor: float) -> np.ndarray:
    return matrix * factor  # a new array: the result is stored (and shared) the same way


def main() -> None:
    ray.init(num_cpus=2)
    matrix = np.arange(4_000 * 1_000, dtype=np.float64).reshape(4_000, 1_000)  # 32 MB

    start = time.perf_counter()
    ref = ray.put(matrix)
    put_s = time.perf_counter() - start
    print(f"put {matrix.nbytes / 1e6:.0f} MB")

    start = time.perf_counter()
    view = ray.get(ref)
    get_s = time.perf_counter() - start
    print("same values:", bool(np.array_equal(view, matrix)), "| read-only:", not view.flags.writeable)
    print(f"timings: put {put_s * 1000:.1f} ms, get {get_s * 1000:.2f} ms")

    # pass the ref, not the array: every task maps the one stored copy
    means = ray.get([column_means.remote(ref) for _ in range(4)])
    print("column means agree:", all(np.allclose(m, matrix.mean(axis=0)) for m in means))

    doubled = ray.get(scaled.remote(ref, 2.0))
    print("scaled[0, :3]:", doubled[0, :3].tolist())

    # a view keeps its object alive; drop views and refs to free the memory
    del view, doubled, ref
    ray.shutdown()


if __name__ == "__main__":
    main()
