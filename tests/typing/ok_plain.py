"""What a checker without rayr's plugin (mypy without it, pyright) still gets right.

Checked by mypy without the plugin in tests/unit/test_typing.py, never run.
"""

from __future__ import annotations

from typing import Any, assert_type

import rayr
from rayr import ActorClass, ActorHandle, ObjectRef


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def incr(self) -> int:
        self.value += 1
        return self.value


@rayr.remote
def square(x: int) -> int:
    return x * x


def plain() -> None:
    # returns are typed; arguments are not checked (a ref may stand for any argument)
    assert_type(square.remote(square.remote(2)), ObjectRef[int])
    # mypy ignores what a class decorator returns: call remote() on the class instead
    counter_cls = rayr.remote(Counter)
    assert_type(counter_cls, ActorClass[Counter])
    counter = counter_cls.remote(1)
    assert_type(counter, ActorHandle[Counter])
    assert_type(counter.incr.remote(), Any)
