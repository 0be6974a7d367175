"""``request_resources``: ask the autoscaler for capacity ahead of the work that needs it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping

from rayr.autoscaler.autoscaler import request_key
from rayr.context import require_core


def request_resources(num_cpus: int | None = None,
                      bundles: list[Mapping[str, float]] | None = None) -> None:
    """Make the cluster's total resources hold ``num_cpus`` CPUs (as 1-CPU bundles) plus
    ``bundles``, scaling up at once if needed; nodes it needs are not stopped for idleness.

    Each call replaces the previous request; ``request_resources()`` (or ``num_cpus=0``) clears
    it. The request has no effect on clusters without an autoscaler (not started by `rayr up`).

    Raises:
        ValueError: a negative CPU count or a bundle that is not a mapping of name -> number >= 0.
    """
    out: list[dict[str, float]] = []
    if num_cpus is not None:
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int | float) or num_cpus < 0:
            raise ValueError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        out += [{"CPU": 1.0} for _ in range(math.ceil(num_cpus))]
    for i, bundle in enumerate(bundles or []):
        if not isinstance(bundle, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in bundle.values()
        ):
            raise ValueError(f"bundles[{i}] must be a dict of resource name -> number >= 0, "
                             f"e.g. {{'CPU': 1, 'GPU': 1}}; got {bundle!r}")
        out.append({str(k): float(v) for k, v in bundle.items() if v > 0})
    gcs = require_core().gcs
    gcs.r.set(request_key(gcs), json.dumps({"bundles": out, "time": time.time()}))
