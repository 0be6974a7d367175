"""rayr.util.progress (this module holds it): refs yielded as they complete while a tqdm bar advances."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

import rayr
from rayr.object_ref import ObjectRef


def progress(
    refs: Iterable[ObjectRef],
    *,
    desc: str | None = None,
    total: int | None = None,
    disable: bool = False,
    file: TextIO | None = None,
    **tqdm_kwargs: Any,
) -> Iterator[ObjectRef]:
    """Yield each ref as soon as its object is ready, advancing a progress bar.

    Refs come in completion order (input order among those ready together); a ref given
    twice is yielded twice. Failed tasks count as complete: ``get`` on the ref raises.

    Args:
        refs: the refs to wait for.
        desc: label shown before the bar.
        total: the bar's length; default the number of refs.
        disable: no bar at all (e.g. in batch jobs).
        file: where the bar goes; default ``sys.stderr``. Need not be a terminal.
        **tqdm_kwargs: more ``tqdm`` options (``unit``, ``mininterval``, ``leave``...).

    Example::

        for ref in progress([work.remote(i) for i in range(1000)], desc="work"):
            handle(rayr.get(ref))

    Raises:
        TypeError: an element of ``refs`` is not an ObjectRef.
    """
    items = list(refs)
    for ref in items:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"progress() expects ObjectRefs, got {type(ref).__name__}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a non-negative int or None, got {total!r}")
    tqdm_kwargs.setdefault("unit", "obj")
    bar_options = dict(
        tqdm_kwargs, total=len(items) if total is None else total, desc=desc, disable=disable, file=file
    )
    # arguments are checked now; the bar appears and the waiting starts when iteration does
    return _iterate(items, bar_options)


def _iterate(items: list[ObjectRef], bar_options: dict[str, Any]) -> Iterator[ObjectRef]:
    # wait() wants unique refs; a duplicate is yielded once per occurrence
    counts = Counter(items)
    pending = list(counts)
    bar = tqdm(**bar_options)
    try:
        while pending:
            # block for the first ready ref, then sweep up every other one already done,
            # so a burst of completions costs one round instead of one per ref
            ready, pending = rayr.wait(pending, num_returns=1)
            if pending:
                more, pending = rayr.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for ref in ready:
                for _ in range(counts[ref]):
                    bar.update(1)
                    yield ref
    finally:
        bar.close()
