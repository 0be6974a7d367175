"""The head monitor: declares nodes dead when their liveness key lapses, and places
placement groups.

All of its state lives in Redis (the pending-group list is the truth; the monitor stream only
wakes it early), so it can be restarted at any time.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from rayr.config import Settings, daemon_settings
from rayr.gcs import control
from rayr.gcs import records as rec
from rayr.gcs.client import NODE_DEAD, RECONNECT_BACKOFF_MAX_S, GcsClient, connect_as
from rayr.gcs.jobs import end_job
from rayr.gcs.placement import place_bundles, ready_object_id
from rayr.keys import Keys
from rayr.monitor.history import sweep_dead_mailboxes, sweep_ended_inboxes, trim_history
from rayr.monitor.recovery import recover_actors, requeue_tasks
from rayr.serialization import dumps

if TYPE_CHECKING:
    from rayr.autoscaler.autoscaler import AutoscalerHook

RESERVE_TIMEOUT_S = 5.0  # a raylet that does not answer a reservation in time counts as a no
TRIM_EVERY_S = 5.0  # how often the history tables are cut back to their settings' sizes
RECLAIM_EVERY_S = 1.0  # how often tasks left under consumers of dead nodes are looked for
# how long a dead node's own task streams are still emptied: submitters route with a node list
# up to a second old, so a task may be sent to a node just after it was declared dead
DEAD_TARGETS_S = 60.0

log = logging.getLogger("rayr.monitor")


def restart_grace_s(settings: Settings) -> float:
    """How long after Redis starts the monitor judges no liveness (see _redis_just_started)."""
    return 2 * settings.node_timeout_s + settings.heartbeat_interval_s + RECONNECT_BACKOFF_MAX_S


class Monitor:
    """Watches node liveness; more duties (actors, placement, autoscaling) build on it."""

    def __init__(self, gcs: GcsClient, settings: Settings) -> None:
        self.gcs = gcs
        self.settings = settings
        self._stop = threading.Event()
        self._signalled = False
        # acts only on clusters of `rayr up`; its code (and pydantic's) loads once one is
        self.autoscaler: AutoscalerHook | None = None
        self._next_autoscaler_check = 0.0
        # dead node -> when we learned it; None until the first reclaim round
        self._recent_dead: dict[str, float] | None = None
        self._next_reclaim = 0.0
        self._next_trim = 0.0
        self._warned_client_list = False

    def stop(self) -> None:
        self._stop.set()

    def _autoscale(self) -> None:
        if self.autoscaler is None:
            now = time.monotonic()
            if now < self._next_autoscaler_check:
                return
            self._next_autoscaler_check = now + 1.0
            if not self.gcs.r.exists(self.gcs.keys.autoscaler_config):
                return
            from rayr.autoscaler.autoscaler import AutoscalerHook

            self.autoscaler = AutoscalerHook(self.gcs, self.settings)
        self.autoscaler.tick()

    def on_signal(self, signum: int, frame: Any) -> None:
        # a flag only: the handler may interrupt this thread inside the Event's own lock
        self._signalled = True

    def check_nodes(self) -> list[str]:
        """Mark ALIVE nodes whose liveness key expired as DEAD; returns their ids."""
        died = []
        for node in self.gcs.list_nodes():
            if not node.alive:
                continue
            node_id = node.node_id
            if not self.gcs.r.exists(self.gcs.keys.node_alive(node_id)) and not self._redis_just_started():
                self.gcs.set_node_state(
                    node_id,
                    NODE_DEAD,
                    f"no heartbeat for {self.settings.node_timeout_s}s",
                )
                log.warning("node %s declared dead: heartbeats stopped", node_id[:12])
                died.append(node_id)
        if not died:
            return died
        if self._recent_dead is not None:
            self._recent_dead.update(dict.fromkeys(died, time.monotonic()))
        self.reclaim_tasks()
        for node_id in died:
            restarted, dead = recover_actors(self.gcs, node_id)
            log.warning("node %s: %d actors restarting, %d dead", node_id[:12], restarted, dead)
        return died

    def reclaim_tasks(self) -> tuple[int, int]:
        """Queue again what nodes that are not alive took or were sent (see ``requeue_tasks``);
        returns (requeued, failed)."""
        now = time.monotonic()
        if self._recent_dead is None:  # first round since we started: every dead node once
            dead = [n.node_id for n in self.gcs.list_nodes() if not n.alive]
            self._recent_dead = dict.fromkeys(dead, now)
        for node_id, since in list(self._recent_dead.items()):
            if now - since > DEAD_TARGETS_S:
                del self._recent_dead[node_id]
        alive = {n.node_id for n in self.gcs.alive_nodes()}
        requeued, failed = requeue_tasks(self.gcs, alive, list(self._recent_dead))
        if requeued or failed:
            log.warning("tasks of dead nodes: %d queued again, %d failed", requeued, failed)
        return requeued, failed

    def _redis_just_started(self) -> bool:
        """Whether Redis restarted too recently to judge liveness: keys may have lapsed while it
        was down, and the raylets need one heartbeat to refresh them after it, which may wait
        out a reconnect backoff first and, on a loaded machine, for a CPU. Two node timeouts
        (one was seen too short in CI): a restart is rare, and a node that died during the
        outage is only found a few seconds later."""
        uptime = int(self.gcs.r.info("server").get("uptime_in_seconds", 1 << 30))
        return uptime < restart_grace_s(self.settings)

    def run(self) -> None:
        last = "$"
        next_check = 0.0
        while not self._stop.is_set() and not self._signalled:
            try:
                now = time.monotonic()
                if now >= next_check:
                    # often: a lapsed node is detected within a quarter second of its timeout
                    self.check_nodes()
                    self.check_jobs()
                    next_check = now + min(self.settings.heartbeat_interval_s, 0.25)
                if now >= self._next_reclaim:
                    self.reclaim_tasks()
                    self._next_reclaim = now + RECLAIM_EVERY_S
                if now >= self._next_trim:
                    s = self.settings
                    trim_history(self.gcs, s.history_max_jobs, s.history_max_actors, s.history_max_nodes,
                                 min_age_s=DEAD_TARGETS_S)
                    sweep_ended_inboxes(self.gcs)
                    sweep_dead_mailboxes(self.gcs)
                    self._next_trim = now + TRIM_EVERY_S
                self.place_pending_groups()
                self._autoscale()
                reply = self.gcs.r.xread(
                    {self.gcs.keys.monitor_stream: last},
                    # short, so a SIGTERM (which only sets a flag) is acted on quickly
                    block=int(min(self.settings.heartbeat_interval_s, 0.25) * 1000),
                    count=100,
                )
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        if b"pg_remove" in fields:
                            self.release_group(fields[b"pg_remove"].decode())
            except redis.RedisError:
                if self._stop.is_set() or self._signalled:
                    return
                log.exception("monitor round failed; retrying")
                time.sleep(0.5)

    def check_jobs(self) -> list[str]:
        """End the jobs whose driver died without ending them.

        A driver refreshes its job's liveness key from a thread, which needs the GIL: a live
        driver that holds it for long (a C extension, pickling gigabytes), is stopped in a
        debugger or swaps lets the key lapse. So a lapsed key only makes us look for the
        driver's named connection, which lasts exactly as long as its process (or until TCP
        keepalive gives up on a vanished host); while it is there the job lives on.
        """
        ended: list[str] = []
        clients: set[str] | None = None  # looked up once a key has lapsed, not every round
        for raw in self.gcs.r.smembers(self.gcs.keys.running_jobs):
            job = raw.decode()
            if self.gcs.r.exists(self.gcs.keys.job_alive(job)):
                continue
            info = self.gcs.get_job(job)
            started = float(info.get("start_time", 0) or 0)
            if time.time() - started < self.settings.node_timeout_s:
                continue  # its driver has not had time to say it is alive yet
            if clients is None:
                if self._redis_just_started():
                    return ended  # keys lapsed during the outage; drivers reconnect within the grace
                clients = self._client_names()
            if self.gcs.keys.driver_client(job) in clients:
                # alive but silent: vouch for it for one more timeout instead of asking again
                ttl_ms = int(self.settings.node_timeout_s * 1000)
                self.gcs.r.set(self.gcs.keys.job_alive(job), b"1", px=ttl_ms)
                continue
            log.warning("job %s: its driver (pid %s) is gone; ending the job", job, info.get("driver_pid"))
            end_job(self.gcs, job, "FAILED", "its driver died", self.settings.task_events_retention_s)
            ended.append(job)
        return ended

    def _client_names(self) -> set[str]:
        """Names of the clients connected to Redis; empty if we may not list them (an ACL or a
        managed Redis that hides CLIENT LIST): then a lapsed key alone ends a job."""
        try:
            return {c.get("name", "") for c in self.gcs.r.client_list(_type="normal")}
        except redis.ResponseError as err:
            if not self._warned_client_list:
                self._warned_client_list = True
                log.warning("cannot list Redis clients (%s): a driver that stops refreshing its "
                            "liveness key for %ss is taken for dead", err, self.settings.node_timeout_s)
            return set()

    # ------------------------------------------------------- placement groups
    def place_pending_groups(self) -> list[str]:
        """Try to place every pending group, oldest first; returns the ones placed now."""
        keys = self.gcs.keys
        placed = []
        for raw in self.gcs.r.lrange(keys.pending_placement_groups, 0, -1):
            pg = raw.decode()
            info = self.gcs.placement_group_info(pg)
            if info.get("state") != "PENDING":
                self.gcs.r.lrem(keys.pending_placement_groups, 0, pg)
                continue
            bundles = json.loads(info["bundles"])
            nodes = self.gcs.alive_nodes()
            free = {n.node_id: n.resources_available for n in nodes}
            plan = place_bundles(bundles, info["strategy"], free)
            if plan is None:
                totals = {n.node_id: n.resources_total for n in nodes}
                never = place_bundles(bundles, info["strategy"], totals) is None
                self.gcs.r.hset(keys.placement_group(pg), "infeasible", int(never))
                continue
            if self._reserve(pg, bundles, plan):
                self._mark_created(pg, plan)
                placed.append(pg)
        return placed

    def _reserve(self, pg: str, bundles: list[dict[str, float]], plan: list[str]) -> bool:
        """Ask each chosen raylet to set its bundles aside; undo them all if any says no."""
        keys = self.gcs.keys
        by_node: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for index, node in enumerate(plan):
            by_node.setdefault(node, []).append((index, bundles[index]))
        reply_key = keys.placement_group_reply(pg)
        self.gcs.r.delete(reply_key)
        for node, items in by_node.items():
            self.gcs.r.xadd(keys.node_stream(node), control.ReserveBundles(pg, items, reply_key).fields())
        answers: dict[str, bool] = {}
        deadline = time.monotonic() + RESERVE_TIMEOUT_S
        while len(answers) < len(by_node) and time.monotonic() < deadline:
            item = self.gcs.r.blpop([reply_key], timeout=max(0.01, deadline - time.monotonic()))
            if item is None:
                break
            verdict, _, node = item[1].decode().partition(":")
            answers[node] = verdict == "ok"
        self.gcs.r.delete(reply_key)
        if len(answers) == len(by_node) and all(answers.values()):
            return True
        for node in by_node:  # a late "ok" is undone too: releasing what was not reserved is a no-op
            self.gcs.r.xadd(keys.node_stream(node), control.ReleaseBundles(pg).fields())
        return False

    def _mark_created(self, pg: str, plan: list[str]) -> None:
        keys = self.gcs.keys
        with self.gcs.r.pipeline() as p:
            p.hset(keys.placement_group(pg), mapping={
                "state": "CREATED", "bundle_nodes": json.dumps(plan), "infeasible": 0,
            })
            p.lrem(keys.pending_placement_groups, 0, pg)
            p.execute()
        ready = ready_object_id(pg)
        self.gcs.store_objects([(ready, rec.value_record(dumps(True)), "")])
        log.info("placement group %s placed on %s", pg, plan)

    def release_group(self, pg: str) -> None:
        """A removed group: its raylets give the bundles back."""
        info = self.gcs.placement_group_info(pg)
        for node in set(json.loads(info.get("bundle_nodes", "[]"))):
            self.gcs.r.xadd(self.gcs.keys.node_stream(node), control.ReleaseBundles(pg).fields())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rayr.monitor")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--settings-json", required=True)
    opts = parser.parse_args(argv)
    settings = daemon_settings(opts.settings_json)
    gcs = GcsClient(connect_as(opts.redis_url, settings), Keys(settings.cluster_name))
    monitor = Monitor(gcs, settings)
    signal.signal(signal.SIGTERM, monitor.on_signal)
    signal.signal(signal.SIGINT, monitor.on_signal)
    monitor.run()


if __name__ == "__main__":
    main()
