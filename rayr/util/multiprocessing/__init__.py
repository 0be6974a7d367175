"""``multiprocessing.Pool`` on a rayr cluster, as Ray's ``ray.util.multiprocessing``.

Replace ``from multiprocessing import Pool`` with ``from rayr.util.multiprocessing import Pool``
and the pool's work runs as rayr actor calls on the cluster.
"""

from __future__ import annotations

from rayr.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool, TimeoutError

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
