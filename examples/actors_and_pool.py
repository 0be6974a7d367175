"""Actors (stateful workers) and ``ActorPool`` (spread calls over several of them).

    python examples/actors_and_pool.py
"""

from __future__ import annotations

import rayr as ray
from rayr.util import ActorPool


@ray.remote
class Counter:
    """Each actor is one process holding its own state; its calls run one at a time, in order."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def add(self, n: int) -> int:
        self.value += n
        return self.value


@ray.remote(num_cpus=0.5)
class Doubler:
    def double(self, x: int) -> int:
        return 2 * x


def main() -> None:
    ray.init(num_cpus=2)

    counter = Counter.remote(10)
    refs = [counter.add.remote(1) for _ in range(5)]  # calls from one caller run in order
    print("counter:", ray.get(refs))

    # a named actor can be found from any process of the job (or of the namespace)
    Counter.options(name="shared").remote(100)
    print("named actor:", ray.get(ray.get_actor("shared").add.remote(1)))

    # ActorPool hands each value to whichever actor is free
    pool = ActorPool([Doubler.remote() for _ in range(3)])
    print("pool, in order:", list(pool.map(lambda actor, v: actor.double.remote(v), range(8))))
    unordered = pool.map_unordered(lambda actor, v: actor.double.remote(v), range(8))
    print("pool, as they finish:", sorted(unordered))

    ray.kill(counter)  # actors end with their job anyway; kill() ends one earlier
    ray.shutdown()


if __name__ == "__main__":
    main()
