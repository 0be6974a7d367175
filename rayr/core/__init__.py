"""What drivers and workers run to own objects and submit tasks: the core worker and its parts
(see core_worker.py for the map and the lock rule)."""

from rayr.core.core_worker import CoreWorker

__all__ = ["CoreWorker"]
