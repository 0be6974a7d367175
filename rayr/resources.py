"""Resource arithmetic, resource *shapes* (the canonical string naming a request) and the
names a placement-group bundle gives its resources.

Pure functions; no I/O; vocabulary every layer shares (submitters, raylets, the monitor, the
autoscaler), so it imports nothing of rayr. A shape names one task stream: every task that asks for exactly
these resources is queued on it, and any node whose totals fit the shape may pull from it.
"""

from __future__ import annotations

from collections.abc import Mapping

EMPTY_SHAPE = "none"
ACTOR_SHAPE_MARK = "@"  # prefixes the shape of actor-creation streams, e.g. "@CPU=1"
TARGET_MARK = "~"  # prefixes scheduler keys of streams targeted at one node, e.g. "~CPU=1"
# suffixes the shape of tasks that run in a runtime env, e.g. "CPU=1|env=<hash>": tasks of
# different envs never share a stream, so a worker leased to one never takes another's
ENV_MARK = "|env="
# prefixes the shape of plain tasks started by a running task or actor, e.g. "^CPU=1" (after
# TARGET_MARK when targeted): raylets read these streams first, so a blocked parent's CPU goes
# to its children rather than to the next parent, which would need a worker process of its own
NESTED_MARK = "^"
_EPS = 1e-9


def shape_key(request: Mapping[str, float]) -> str:
    """Canonical name of a resource request, e.g. ``CPU=1,GPU=0.5``; ``none`` for nothing."""
    parts = [f"{name}={amount:g}" for name, amount in sorted(request.items()) if amount > 0]
    return ",".join(parts) if parts else EMPTY_SHAPE


def parse_shape(key: str) -> dict[str, float]:
    """Inverse of :func:`shape_key` (an actor-creation mark is ignored)."""
    key = key.removeprefix(TARGET_MARK).removeprefix(NESTED_MARK).removeprefix(ACTOR_SHAPE_MARK)
    key = key.partition(ENV_MARK)[0]
    if key == EMPTY_SHAPE:
        return {}
    out = {}
    for part in key.split(","):
        name, _, amount = part.rpartition("=")
        out[name] = float(amount)
    return out


def is_nested(key: str) -> bool:
    """Whether a shape or scheduler key is that of tasks started by a running task."""
    return key.removeprefix(TARGET_MARK).startswith(NESTED_MARK)


def env_of(key: str) -> str:
    """The runtime env hash a shape or scheduler key names; "" for none."""
    return key.partition(ENV_MARK)[2]


def fits(available: Mapping[str, float], request: Mapping[str, float]) -> bool:
    """Whether ``request`` fits in ``available``."""
    return all(available.get(name, 0.0) + _EPS >= amount for name, amount in request.items())


def how_many_fit(available: Mapping[str, float], request: Mapping[str, float], cap: int) -> int:
    """How many copies of ``request`` fit in ``available`` (at most ``cap``)."""
    n = cap
    for name, amount in request.items():
        if amount > 0:
            n = min(n, int((available.get(name, 0.0) + _EPS) // amount))
    return max(n, 0)


def subtract(available: dict[str, float], request: Mapping[str, float]) -> None:
    for name, amount in request.items():
        available[name] = available.get(name, 0.0) - amount


def add(available: dict[str, float], request: Mapping[str, float]) -> None:
    for name, amount in request.items():
        available[name] = available.get(name, 0.0) + amount


# ------------------------------------------------------------------ placement-group bundles
BUNDLE = "bundle"  # a marker resource every bundle has, so even a 0-CPU task stays in its group
BUNDLE_MARKER_TOTAL = 1000.0
BUNDLE_MARKER_ASK = 0.001


def bundle_resource_names(name: str, pg_hex: str, index: int) -> tuple[str, str]:
    """The names a bundle's resource ``name`` gets on its node: indexed and wildcard."""
    return f"{name}_group_{index}_{pg_hex}", f"{name}_group_{pg_hex}"


def renamed_request(request: Mapping[str, float], pg_hex: str, index: int) -> dict[str, float]:
    """What a task in bundle ``index`` (-1: any bundle) of the group asks for."""
    out = {}
    for name, amount in {**request, BUNDLE: BUNDLE_MARKER_ASK}.items():
        indexed, wildcard = bundle_resource_names(name, pg_hex, index)
        out[wildcard if index < 0 else indexed] = amount
    return out
