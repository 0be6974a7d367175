"""Deliberate type errors. A line's ``# E: <code>`` is an error mypy must report there with
or without rayr's plugin; ``# E[plugin]: <code>`` only with it, ``# E[plain]: <code>`` only
without it. tests/unit/test_typing.py checks that mypy reports exactly these.
"""

from __future__ import annotations

import rayr


@rayr.remote
def square(x: int) -> int:
    return x * x


@rayr.remote(num_cpu=2)  # E: call-overload
def typo() -> None:
    pass


@rayr.remote
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def incr(self, by: int) -> int:
        self.value += by
        return self.value

    @property
    def doubled(self) -> int:
        return 2 * self.value


def calls() -> None:
    text: str = rayr.get(square.remote(2))  # E: assignment
    square.remote("2")  # E[plugin]: arg-type
    square.remote(rayr.put("2"))  # E[plugin]: arg-type
    square.remote(1, 2)  # E[plugin]: call-arg
    rayr.put(1).hex(2)  # E: call-arg
    counter = Counter.remote("0")  # E[plugin]: arg-type  # E[plain]: attr-defined
    counter.incr.remote("1")  # E[plugin]: arg-type
    counter.decr.remote(1)  # E[plugin]: attr-defined
    counter.doubled.remote()  # E[plugin]: attr-defined
    counter.incr.remote(1).incr()  # E[plugin]: attr-defined
    total: str = rayr.get(counter.incr.remote(1))  # E[plugin]: assignment
    del text, total
