"""Ending a job: what a driver does at shutdown, and what the monitor does for a driver that
died without one (its liveness key lapsed)."""

from __future__ import annotations

import redis

from rayr.exceptions import ActorDiedError, TaskCancelledError
from rayr.gcs import control
from rayr.gcs.client import GcsClient
from rayr.keys import TASK_GROUP
from rayr.task_spec import SPEC_FIELD, TaskSpec


def kill_actor(gcs: GcsClient, actor_id: str, why: str, no_restart: bool) -> None:
    """Kill an actor; with ``no_restart`` it is DEAD at once and its queued calls fail."""
    info = gcs.actor_info(actor_id)
    if not info or info.get("state") == "DEAD":
        return
    if no_restart:
        cause = f"The actor {actor_id} ({info.get('class_name')}) was killed: {why}."
        gcs.fail_tasks(gcs.mark_actor_dead(actor_id, cause), ActorDiedError(cause, actor_id))
    node = info.get("node")
    if node:
        gcs.r.xadd(gcs.keys.node_stream(node), control.Kill(actor_id).fields())


def drop_queued_tasks(gcs: GcsClient, job_hex: str) -> int:
    """Delete the job's tasks that no raylet has read yet from every task stream (those
    already running finish); returns how many were dropped."""
    dropped: list[TaskSpec] = []
    for stream in gcs.task_streams():
        client = gcs.stream_client(stream)
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no such stream
            continue
        group = next((g for g in groups if g["name"] == TASK_GROUP.encode()), None)
        start = b"(" + group["last-delivered-id"] if group else b"-"
        ours = []
        while True:
            entries = client.xrange(stream, min=start, max="+", count=1000)
            for entry_id, fields in entries:
                if SPEC_FIELD in fields and (spec := TaskSpec.decode(fields[SPEC_FIELD])).job_hex == job_hex:
                    ours.append(entry_id)
                    dropped.append(spec)
            if len(entries) < 1000:
                break
            start = b"(" + entries[-1][0]
        for i in range(0, len(ours), 1000):
            client.xdel(stream, *ours[i : i + 1000])
    if dropped:  # anyone still waiting on them (a borrower, a generator) hears why
        gcs.fail_tasks(dropped, TaskCancelledError(f"Job {job_hex} ended before the task ran."))
    return len(dropped)


def end_job(gcs: GcsClient, job_hex: str, status: str, why: str, retention_s: float) -> None:
    """Kill the job's non-detached actors, remove its non-detached placement groups, mark it
    ended, drop its table entries, and have every node free what the job left in its store."""
    try:
        drop_queued_tasks(gcs, job_hex)
        for actor_id in gcs.job_actors(job_hex):
            kill_actor(gcs, actor_id, why, no_restart=True)
        for info in gcs.placement_groups():
            if info["pg_id"].startswith(job_hex) and info.get("detached") != "1":
                gcs.remove_placement_group(info["pg_id"])
        driver = gcs.r.hget(gcs.keys.job(job_hex), "driver_worker")
        gcs.finish_job(job_hex, status, retention_s)
        if driver:  # a driver that died left what was sent to it, and more may come
            gcs.drop_inbox(driver.decode())
            gcs.r.sadd(gcs.keys.ended_drivers, driver)
        with gcs.r.pipeline(transaction=False) as pipe:
            for node in gcs.alive_nodes():
                pipe.xadd(gcs.keys.node_stream(node.node_id), control.JobDone(job_hex).fields())
            pipe.execute()
    except redis.RedisError:  # the cluster is going away too
        pass
