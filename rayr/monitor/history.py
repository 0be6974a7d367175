"""Keeping the GCS tables bounded: ended jobs, dead actors and dead nodes stay readable (for
``rayr status``, ``list_named_actors``, an actor handle's error) until the oldest beyond the
``history_max_*`` settings are deleted by the monitor, as Ray caps its cached dead actors
and nodes."""

from __future__ import annotations

import time

from rayr.exceptions import ActorDiedError
from rayr.gcs.client import GcsClient
from rayr.keys import spread_tag


def trim_history(
    gcs: GcsClient, max_jobs: int, max_actors: int, max_nodes: int, min_age_s: float = 0.0
) -> int:
    """Delete the oldest ended jobs, dead actors and dead nodes beyond the given counts
    (their table entries and what else they left: a driver's inbox, a node's streams), but
    none that ended less than ``min_age_s`` ago (the monitor still empties a node's streams
    for a while after its death); returns how many entries went."""
    keys = gcs.keys
    removed = 0
    before = time.time() - min_age_s
    for zset, keep, forget in ((keys.ended_jobs, max_jobs, _forget_job),
                               (keys.dead_actors, max_actors, _forget_actor),
                               (keys.dead_nodes, max_nodes, _forget_node)):
        excess = int(gcs.r.zcard(zset)) - keep
        if excess <= 0:
            continue
        for raw, ended in gcs.r.zrange(zset, 0, excess - 1, withscores=True):
            if ended > before:
                break
            forget(gcs, raw.decode())
            gcs.r.zrem(zset, raw)
            removed += 1
    return removed


GONE_WORKER_S = 600.0  # how long a dead worker's inbox is deleted again (results of its tasks)


def sweep_ended_inboxes(gcs: GcsClient) -> None:
    """Delete the inboxes of ended jobs' drivers and of exited workers again: a task they
    started that was still running delivers its result there later. A driver stays in
    ``ended_drivers`` until the history drops its job; a worker in ``gone_workers`` for
    GONE_WORKER_S."""
    keys = gcs.keys
    gcs.r.zremrangebyscore(keys.gone_workers, "-inf", time.time() - GONE_WORKER_S)
    owners = [*gcs.r.smembers(keys.ended_drivers), *gcs.r.zrange(keys.gone_workers, 0, -1)]
    if not owners:
        return
    gcs.drop_inboxes(owner.decode() for owner in owners)


DEAD_MAILBOX_S = 60.0  # how long after an actor's death its mailbox is closed again


def sweep_dead_mailboxes(gcs: GcsClient) -> int:
    """Close again the mailboxes of actors that died in the last DEAD_MAILBOX_S, failing any
    call found there: the process that marked one DEAD closes its mailbox in a second step
    (another slot on a Redis Cluster) and may have died in between. How many calls it failed."""
    dead = gcs.r.zrangebyscore(gcs.keys.dead_actors, time.time() - DEAD_MAILBOX_S, "+inf")
    failed = 0
    for actor in dead:
        actor_hex = actor.decode()
        specs = gcs.close_mailbox(actor_hex)
        if specs:
            cause = gcs.actor_death_cause(actor_hex)
            gcs.fail_tasks(specs, ActorDiedError(cause, actor_hex))
            failed += len(specs)
    return failed


def _forget_job(gcs: GcsClient, job_hex: str) -> None:
    keys = gcs.keys
    driver = gcs.r.hget(keys.job(job_hex), "driver_worker")
    gcs.shard(spread_tag(job_hex)).delete(*keys.task_events_keys(job_hex))
    if driver:
        gcs.drop_inbox(driver.decode())
    with gcs.r.pipeline(transaction=False) as p:
        p.delete(keys.job(job_hex), keys.job_actors(job_hex))
        if driver:  # results of tasks that ended after their driver may have refilled it
            p.srem(keys.ended_drivers, driver)
        p.srem(keys.jobs, job_hex)
        p.execute()


def _forget_actor(gcs: GcsClient, actor_hex: str) -> None:
    with gcs.r.pipeline(transaction=False) as p:
        p.delete(gcs.keys.actor(actor_hex))  # a call through an old handle still fails clearly
        p.srem(gcs.keys.actors, actor_hex)
        p.execute()


def _forget_node(gcs: GcsClient, node_hex: str) -> None:
    keys = gcs.keys
    targeted = [s for s in gcs.task_streams() if keys.parse_task_stream(s)[1] == node_hex]
    for stream in targeted:
        gcs.stream_client(stream).delete(stream)
    with gcs.r.pipeline(transaction=False) as p:
        p.delete(keys.node(node_hex), keys.node_stream(node_hex))
        if targeted:
            p.srem(keys.task_streams, *targeted)
        p.srem(keys.nodes, node_hex)
        p.execute()
