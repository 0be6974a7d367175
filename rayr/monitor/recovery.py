"""What the monitor does when a node dies: nothing that can be recovered is lost.

- Tasks the node (or one of its leased workers) had taken but not finished are found in the
  task streams' pending-entries lists, and tasks sent to the node's own streams are found
  there; both are queued again on the shared stream of their shape (another node pulls
  them), or failed with an error naming the node once ``max_retries`` is used up. The
  monitor repeats this every second, not only at the death: what a dead node's surviving
  workers take afterwards is found too.
- Actors that lived there are restarted elsewhere while ``max_restarts`` allows (their
  creation task is queued again, marked as a restart, so the new incarnation replays its
  mailbox), and otherwise marked DEAD with their queued calls failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rayr.exceptions import ActorDiedError
from rayr.gcs.client import GcsClient
from rayr.gcs.rows import ActorState
from rayr.keys import TASK_GROUP, consumer_node, spread_tag
from rayr.resources import ACTOR_SHAPE_MARK, ENV_MARK, TARGET_MARK, shape_key
from rayr.task_spec import SPEC_FIELD, TaskSpec, entry_fields

log = logging.getLogger("rayr.recovery")


def _announce(gcs: GcsClient, shape: str, tag: int) -> str:
    """The shared stream of ``shape`` under spread tag ``tag``, made known to every live
    raylet; returns its name."""
    stream = gcs.keys.shape_stream(shape, tag)
    gcs.ensure_group(stream)
    if gcs.announce_stream(stream):  # new: raylets learn of it through a poke
        gcs.poke(n.node_id for n in gcs.alive_nodes())
    return stream


def _requeue_entries(gcs: GcsClient, stream: str, entry_ids: list[bytes], why: str) -> tuple[int, int]:
    """Queue the tasks of ``entry_ids`` again on the shared stream of their shape (under the
    same tag: their submitter's), or fail them once their retries are used up; then take the
    entries off ``stream``."""
    key, _node, tag = gcs.keys.parse_task_stream(stream)
    shape = key.removeprefix(TARGET_MARK)
    client = gcs.stream_client(stream)
    requeued = failed = 0
    for entry_id in entry_ids:
        found = client.xrange(stream, entry_id, entry_id)
        if found and SPEC_FIELD in found[0][1]:
            spec = TaskSpec.decode(found[0][1][SPEC_FIELD])
            if gcs.retry_or_fail(spec, _announce(gcs, shape, tag), why):
                requeued += 1
            else:
                failed += 1
        client.xack(stream, TASK_GROUP, entry_id)
        client.xdel(stream, entry_id)
    return requeued, failed


def requeue_tasks(gcs: GcsClient, alive: set[str], dead: Iterable[str]) -> tuple[int, int]:
    """Queue again (or fail) every task that a node no longer alive had taken or was sent;
    returns (requeued, failed).

    Run when a node is declared dead and then periodically: a dead node's leased workers may
    live on for a while (a frozen raylet whose workers kept reading) and take more entries
    after the first look, so no entry may stay pending under a consumer of a dead node, and
    none may wait unread on a stream targeted at one. ``dead`` names the nodes whose targeted
    streams to empty (those that died recently: a submitter may still send to one whose death
    it has not heard of yet).
    """
    requeued = failed = 0
    dead = set(dead)
    streams = gcs.task_streams()
    for stream in streams:
        _key, target, _tag = gcs.keys.parse_task_stream(stream)
        if target in dead:
            # a stream targeted at a dead node: everything on it (taken by the node, or not
            # read yet) goes to the shared stream of its shape
            entries = gcs.stream_client(stream).xrange(stream, count=10_000)
            if entries:
                why = f"it was sent to node {target[:12]}, which died"
                r, f = _requeue_entries(gcs, stream, [e[0] for e in entries], why)
                requeued, failed = requeued + r, failed + f
    # who holds what, for every stream at once (this runs every second)
    summaries = gcs.per_stream(streams, lambda p, s: p.xpending(s, TASK_GROUP))
    for stream, (summary,) in summaries.items():
        if isinstance(summary, Exception):  # the stream or its group is gone
            continue
        client = gcs.stream_client(stream)
        for item in summary.get("consumers") or []:
            node = consumer_node(item["name"])
            if node in alive or gcs.node_alive(node):
                continue  # (the second: a node that joined since ``alive`` was read)
            entries = client.xpending_range(stream, TASK_GROUP, "-", "+", 10_000, consumername=item["name"])
            why = f"it was running on node {node[:12]}, which died"
            r, f = _requeue_entries(gcs, stream, [e["message_id"] for e in entries], why)
            requeued, failed = requeued + r, failed + f
    return requeued, failed


def recover_actors(gcs: GcsClient, node_id: str) -> tuple[int, int]:
    """Restart elsewhere (or mark DEAD) the actors that lived on the dead node."""
    restarted = dead = 0
    for key in gcs.r.scan_iter(match=gcs.keys.actor_key_prefix + "*", count=1000):
        actor_id = key.decode()[len(gcs.keys.actor_key_prefix):]
        info = gcs.actor_row(actor_id)
        live = (ActorState.ALIVE, ActorState.RESTARTING)
        if info is None or info.node != node_id or info.state not in live:
            continue
        spec_bytes = info.creation_spec
        if spec_bytes and info.may_restart():
            if gcs.set_actor_state(actor_id, ActorState.RESTARTING, restarts=info.restarts + 1, node=""):
                spec = TaskSpec.decode(spec_bytes)
                env = (spec.actor_options or {}).get("runtime_env", "")
                shape = ACTOR_SHAPE_MARK + shape_key(spec.resources) + (ENV_MARK + env if env else "")
                stream = _announce(gcs, shape, spread_tag(spec.owner))  # under its owner's tag
                gcs.stream_client(stream).xadd(stream, entry_fields(spec_bytes, creation=True, restart=True))
                restarted += 1
            continue
        cause = (f"The actor {actor_id} ({info.class_name}) died with its node "
                 f"{node_id[:12]}, and it has no restarts left (max_restarts={info.max_restarts}).")
        gcs.fail_tasks(gcs.mark_actor_dead(actor_id, cause), ActorDiedError(cause, actor_id))
        dead += 1
    return restarted, dead

