"""Ending a job: what a driver does at shutdown, and what the monitor does for a driver that
died without one (its liveness key lapsed)."""

from __future__ import annotations

import redis

from rayr.exceptions import ActorDiedError
from rayr.gcs.client import GcsClient


def kill_actor(gcs: GcsClient, actor_id: str, why: str, no_restart: bool) -> None:
    """Kill an actor; with ``no_restart`` it is DEAD at once and its queued calls fail."""
    info = gcs.actor_info(actor_id)
    if not info or info.get("state") == "DEAD":
        return
    if no_restart:
        cause = f"The actor {actor_id} ({info.get('class_name')}) was killed: {why}."
        gcs.fail_tasks(gcs.mark_actor_dead(actor_id, cause), ActorDiedError(cause))
    node = info.get("node")
    if node:
        gcs.r.xadd(gcs.keys.node_stream(node), {b"kill": actor_id.encode()})


def end_job(gcs: GcsClient, job_hex: str, status: str, why: str) -> None:
    """Kill the job's non-detached actors, remove its non-detached placement groups, mark it
    ended, drop its table entries, and have every node free what the job left in its store."""
    try:
        for actor_id in gcs.job_actors(job_hex):
            kill_actor(gcs, actor_id, why, no_restart=True)
        for info in gcs.placement_groups():
            if info["pg_id"].startswith(job_hex) and info.get("detached") != "1":
                gcs.remove_placement_group(info["pg_id"])
        gcs.finish_job(job_hex, status)
        with gcs.r.pipeline(transaction=False) as pipe:
            for node in gcs.alive_nodes():
                pipe.xadd(gcs.keys.node_stream(node["node_id"]), {b"jobdone": job_hex.encode()})
            pipe.execute()
    except redis.RedisError:  # the cluster is going away too
        pass
