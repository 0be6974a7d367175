"""Ray's state API over rayr's GCS tables and task events: list, get and summarize what a
cluster runs. Every function takes ``address`` (default: the connected driver's cluster,
else ``RAYR_ADDRESS``, else this host's) and reads Redis only: nothing asks a raylet.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rayr import context
from rayr.gcs import records as rec
from rayr.gcs import task_events as tev
from rayr.gcs.client import GcsClient
from rayr.gcs.cluster import cluster_client
from rayr.util.state.common import (
    DEFAULT_LIMIT,
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    RayStateApiException,
    TaskState,
    WorkerState,
)

R = TypeVar("R")
Filter = tuple[str, str, Any]
PREDICATES = ("=", "!=")


def client_for(address: str | None) -> GcsClient:
    """The cluster at ``address``; by default the connected driver's, with what this process
    did so far already in Redis."""
    core = context.state.core
    if address is None and core is not None:
        # what this process did so far (puts, submissions, its task events) is in Redis first
        if core.events is not None:
            core.events.flush()
        core.commands.flush()
        return core.gcs
    return cluster_client(address)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _matcher(cls: type, filters: list[Filter] | None) -> Callable[[Any], bool]:
    """A test of records of ``cls`` against ``filters``; raises ValueError on a bad filter."""
    names = cls.field_names()  # type: ignore[attr-defined]
    checks = []
    for item in filters or []:
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise ValueError(
                f"a filter is (key, predicate, value), e.g. ('state', '=', 'RUNNING'); got {item!r}")
        key, predicate, value = item
        if key not in names:
            raise ValueError(f"unknown filter key {key!r} for {cls.__name__}; valid keys: {', '.join(names)}")
        if predicate not in PREDICATES:
            raise ValueError(f"unknown predicate {predicate!r}; valid predicates: {', '.join(PREDICATES)}")
        wanted = _text(value).lower() if isinstance(value, bool) else _text(value)
        checks.append((key, predicate == "=", wanted))

    def test(record: Any) -> bool:
        for key, equal, wanted in checks:
            got = _text(getattr(record, key))
            if (got.lower() == wanted.lower() if got in ("true", "false") else got == wanted) != equal:
                return False
        return True

    return test


def _take(records: Iterable[R], test: Callable[[R], bool], limit: int | None) -> list[R]:
    out = []
    for record in records:
        if test(record):
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


def _equal_filter(filters: list[Filter] | None, key: str) -> str | None:
    for item in filters or []:
        if len(item) == 3 and item[0] == key and item[1] == "=":
            return _text(item[2])
    return None


# ------------------------------------------------------------------- sources
def _nodes(gcs: GcsClient) -> Iterator[NodeState]:
    for n in gcs.list_nodes():
        yield NodeState(
            node_id=n.node_id, node_ip=n.host, is_head_node=n.is_head, state=str(n.state),
            node_name=n.hostname, resources_total=n.resources_total,
            resources_available=n.resources_available if n.alive else {},
            start_time_ms=int(n.start_time * 1000) if n.start_time else None,
            end_time_ms=int(n.end_time * 1000) if n.end_time else None,
            state_message=n.death_reason or None,
        )


def _actor_state(actor_id: str, row: dict[str, Any]) -> ActorState:
    return ActorState(
        actor_id=actor_id, class_name=row.get("class_name", ""), state=row.get("state", "DEAD"),
        job_id=row.get("job") or actor_id[:8], name=row.get("name", ""),
        ray_namespace=row.get("namespace", ""), node_id=row.get("node") or None,
        pid=int(row["pid"]) if row.get("pid", "").isdigit() else None,
        num_restarts=int(row.get("restarts") or 0), max_restarts=int(row.get("max_restarts") or 0),
        is_detached=row.get("detached") == "1", death_cause=row.get("death_cause") or None,
    )


def _actors(gcs: GcsClient, ids: list[str] | None = None) -> Iterator[ActorState]:
    if ids is None:
        ids = sorted(raw.decode() for raw in gcs.r.smembers(gcs.keys.actors))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        with gcs.r.pipeline(transaction=False) as p:
            for actor_id in chunk:
                p.hmget(gcs.keys.actor(actor_id), ACTOR_FIELDS)
            rows = p.execute()
        for actor_id, values in zip(chunk, rows, strict=True):
            if any(v is not None for v in values):
                row = {k: v.decode(errors="replace") for k, v in zip(ACTOR_FIELDS, values, strict=True) if v}
                yield _actor_state(actor_id, row)


ACTOR_FIELDS = ["class_name", "state", "job", "name", "namespace", "node", "pid", "restarts",
                "max_restarts", "detached", "death_cause"]


def _jobs(gcs: GcsClient) -> Iterator[JobState]:
    from rayr.job_submission import job_rows

    for row in job_rows(gcs):
        start = row.get("start_time")
        yield JobState(
            job_id=row.get("job_id") or None, submission_id=row.get("submission_id"),
            status=row.get("status", ""), entrypoint=row.get("entrypoint", ""),
            type="SUBMISSION" if row.get("submission_id") else "DRIVER",
            start_time=int(start * 1000) if start else None,
        )


def _placement_groups(gcs: GcsClient) -> Iterator[PlacementGroupState]:
    for info in gcs.placement_groups():
        nodes = json.loads(info.get("bundle_nodes") or "[]")
        bundles = [
            {"bundle_id": i, "unit_resources": b, "node_id": nodes[i] if i < len(nodes) else None}
            for i, b in enumerate(json.loads(info.get("bundles") or "[]"))
        ]
        yield PlacementGroupState(
            placement_group_id=info["pg_id"], name=info.get("name", ""), creator_job_id=info["pg_id"][:8],
            state=info.get("state", ""), strategy=info.get("strategy", ""),
            is_detached=info.get("detached") == "1", bundles=bundles,
        )


def _objects(gcs: GcsClient) -> Iterator[ObjectState]:
    for batch in gcs.object_records():
        holders = gcs.object_holders([object_hex for object_hex, _ in batch])
        for (object_hex, record), members in zip(batch, holders, strict=True):
            captured = sorted(m.decode()[2:] for m in members if m.startswith(b"o:"))
            borrowers = len(members) - len(captured)
            node, size = rec.parse_stored(record) if record[0] == rec.STORED else (None, len(record) - 1)
            yield ObjectState(
                object_id=object_hex, object_size=size, job_id=object_hex[:8],
                storage={rec.VALUE: "INLINE", rec.STORED: "OBJECT_STORE"}.get(record[0], "ERROR"),
                node_id=node, num_borrowers=borrowers, captured_in=captured,
                reference_type="CAPTURED_IN_OBJECT" if captured else "BORROWED" if borrowers
                else "LOCAL_REFERENCE",
                task_status=tev.FAILED if record[0] == rec.ERROR else tev.FINISHED,
            )


def _task_jobs(gcs: GcsClient, filters: list[Filter] | None) -> list[str]:
    job = _equal_filter(filters, "job_id")
    return [job] if job else tev.task_jobs(gcs)


def _tasks(gcs: GcsClient, filters: list[Filter] | None, detail: bool,
           raise_on_missing_output: bool) -> Iterator[TaskState]:
    jobs = _task_jobs(gcs, filters)
    dropped = tev.dropped_events(gcs, jobs)
    if dropped and raise_on_missing_output:
        raise RayStateApiException(
            f"task events were dropped for job(s) {dropped} (more tasks than task_events_max_per_job); "
            "the list would be incomplete. Pass raise_on_missing_output=False to list what was kept."
        )
    task_id = _equal_filter(filters, "task_id")
    ids = [bytes.fromhex(task_id)] if task_id and _is_hex(task_id, 16) else None
    for record in tev.read_tasks(gcs, jobs, task_ids=ids):
        state = TaskState(**vars(record))
        if not detail:
            state.events = []
        yield state


def _is_hex(text: str, size: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == size
    except ValueError:
        return False


def _workers(gcs: GcsClient) -> Iterator[WorkerState]:
    """Who ran work: drivers (the job table), actors' workers and every executor seen in the
    task events. Alive: a running job's driver, a live actor's worker, a worker on a live node."""
    nodes = {n.node_id: n for n in gcs.list_nodes()}
    seen: set[str] = set()
    for job in gcs.r.smembers(gcs.keys.jobs):
        info = gcs.get_job(job.decode())
        worker = info.get("driver_worker")
        if worker and worker not in seen:
            seen.add(worker)
            yield WorkerState(worker_id=worker, worker_type="DRIVER",
                              is_alive=info.get("status") == "RUNNING",
                              node_id=info.get("driver_node") or None,
                              pid=int(info["driver_pid"]) if info.get("driver_pid", "").isdigit() else None,
                              job_id=info.get("job_id"))
    executors: dict[str, tuple[str | None, int | None, str | None]] = {}
    for record in tev.read_tasks(gcs, tev.task_jobs(gcs)):
        if record.worker_id and record.worker_id not in executors:
            executors[record.worker_id] = (record.node_id, record.worker_pid, record.actor_id
                                           if record.type != "NORMAL_TASK" else None)
    alive_actor_pids = {a.pid: a for a in _actors(gcs) if a.state == "ALIVE"}
    for worker, (node_id, pid, actor_id) in sorted(executors.items()):
        if worker in seen:
            continue
        seen.add(worker)
        node = nodes.get(node_id or "")
        alive = node is not None and node.alive
        if actor_id is not None:
            actor = alive_actor_pids.get(pid)
            alive = alive and actor is not None and actor.actor_id == actor_id
        yield WorkerState(worker_id=worker, worker_type="WORKER", is_alive=alive, node_id=node_id, pid=pid,
                          ip=node.host if node else None, actor_id=actor_id)


# --------------------------------------------------------------------- lists
SOURCES: dict[str, tuple[type, Callable[..., Iterable[Any]]]] = {
    "tasks": (TaskState, _tasks),
    "actors": (ActorState, lambda gcs, *_: _actors(gcs)),
    "objects": (ObjectState, lambda gcs, *_: _objects(gcs)),
    "nodes": (NodeState, lambda gcs, *_: _nodes(gcs)),
    "jobs": (JobState, lambda gcs, *_: _jobs(gcs)),
    "placement-groups": (PlacementGroupState, lambda gcs, *_: _placement_groups(gcs)),
    "workers": (WorkerState, lambda gcs, *_: _workers(gcs)),
}


def query(gcs: GcsClient, resource: str, filters: list[Filter] | None = None,
          limit: int | None = DEFAULT_LIMIT, detail: bool = False,
          raise_on_missing_output: bool = True) -> list[Any]:
    """Records of ``resource`` (a key of ``SOURCES``) in the cluster ``gcs`` reaches."""
    cls, source = SOURCES[resource]
    test = _matcher(cls, filters)  # a bad filter fails before anything is read
    return _take(source(gcs, filters, detail, raise_on_missing_output), test, limit)


def _listing(resource: str, doc: str) -> Callable[..., list[Any]]:
    def list_fn(address: str | None = None, filters: list[Filter] | None = None,
                limit: int = DEFAULT_LIMIT, timeout: int = 30, detail: bool = False,
                raise_on_missing_output: bool = True, _explain: bool = False) -> list[Any]:
        return query(client_for(address), resource, filters, limit, detail, raise_on_missing_output)

    list_fn.__name__ = list_fn.__qualname__ = "list_" + resource.replace("-", "_")
    list_fn.__doc__ = doc
    return list_fn


list_tasks = _listing("tasks", "Tasks and actor calls from the task events (TaskState records; ``events`` "
                      "only with ``detail=True``). A ``job_id`` or ``task_id`` equality filter reads "
                      "only that job or task.")
list_nodes = _listing("nodes", "Every node the cluster has seen (NodeState records).")
list_actors = _listing("actors", "Every actor in the actor table (ActorState records).")
list_jobs = _listing("jobs", "Drivers that connected and jobs submitted (JobState records).")
list_placement_groups = _listing("placement-groups", "Placement groups (PlacementGroupState records).")
list_objects = _listing("objects", "Objects in the object table (ObjectState records), as Redis knows them.")
list_workers = _listing("workers", "Drivers and the workers that ran tasks or actors (WorkerState records).")


# ---------------------------------------------------------------------- gets
def _one(items: list[R], what: str, wanted: str) -> R | None:
    if len(items) > 1:
        raise RayStateApiException(f"{len(items)} {what}s match {wanted!r}; give the whole id")
    return items[0] if items else None


def get_in(gcs: GcsClient, resource: str, id: str) -> Any:
    """The one record of ``resource`` with this id, or None."""
    if resource == "tasks":
        if not _is_hex(id, 16):
            raise ValueError(f"a task id is 32 hex characters; got {id!r}")
        found = _tasks(gcs, [("task_id", "=", id), ("job_id", "=", id[:8])], True, False)
        return _one(list(found), "task", id)
    if resource == "actors":
        return next(iter(_actors(gcs, [id])), None)
    if resource == "nodes":
        return _one([n for n in _nodes(gcs) if n.node_id == id], "node", id)
    if resource == "placement-groups":
        return _one([p for p in _placement_groups(gcs) if p.placement_group_id == id], "placement group", id)
    raise ValueError(f"cannot get {resource!r} by id; one of: tasks, actors, nodes, placement-groups")


def get_task(id: str, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> TaskState | None:
    """The task (its latest attempt) with this hex id, or None."""
    return get_in(client_for(address), "tasks", id)


def get_actor(id: str, address: str | None = None, timeout: int = 30,
              _explain: bool = False) -> ActorState | None:
    """The actor with this hex id, or None."""
    return get_in(client_for(address), "actors", id)


def get_node(id: str, address: str | None = None, timeout: int = 30,
             _explain: bool = False) -> NodeState | None:
    """The node with this id, or None."""
    return get_in(client_for(address), "nodes", id)


def get_placement_group(id: str, address: str | None = None, timeout: int = 30,
                        _explain: bool = False) -> PlacementGroupState | None:
    """The placement group with this id, or None."""
    return get_in(client_for(address), "placement-groups", id)


def get_objects(id: str, address: str | None = None, timeout: int = 30,
                _explain: bool = False) -> list[ObjectState]:
    """The object with this id (a list, as Ray's)."""
    return [o for o in _objects(client_for(address)) if o.object_id == id]


# ----------------------------------------------------------------- summaries
def summarize(gcs: GcsClient, resource: str, raise_on_missing_output: bool = True) -> dict[str, Any]:
    """The summary of ``resource`` (tasks, actors or objects)."""
    if resource not in SUMMARIES:
        raise ValueError(f"cannot summarize {resource!r}; one of: {', '.join(SUMMARIES)}")
    return SUMMARIES[resource](gcs, raise_on_missing_output)


def summarize_tasks(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                    _explain: bool = False) -> dict[str, Any]:
    """Tasks by function (or actor method): counts per state, as Ray's ``ray summary tasks``."""
    return _summarize_tasks(client_for(address), raise_on_missing_output)


def summarize_actors(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                     _explain: bool = False) -> dict[str, Any]:
    """Actors by class: counts per state."""
    return _summarize_actors(client_for(address), raise_on_missing_output)


def summarize_objects(address: str | None = None, timeout: int = 30, raise_on_missing_output: bool = True,
                      _explain: bool = False) -> dict[str, Any]:
    """Objects by job: count, bytes, and counts by storage and reference type."""
    return _summarize_objects(client_for(address), raise_on_missing_output)


def _summarize_tasks(gcs: GcsClient, raise_on_missing_output: bool) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    total = 0
    for task in _tasks(gcs, None, False, raise_on_missing_output):
        total += 1
        entry = summary.setdefault(task.func_or_class_name, {
            "func_or_class_name": task.func_or_class_name, "type": task.type, "state_counts": Counter()})
        entry["state_counts"][task.state] += 1
    for entry in summary.values():
        entry["state_counts"] = dict(entry["state_counts"])
    return {"cluster": {"summary": summary, "total_tasks": total, "summary_by": "func_name"}}


def _summarize_actors(gcs: GcsClient, raise_on_missing_output: bool) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    total = 0
    for actor in _actors(gcs):
        total += 1
        entry = summary.setdefault(actor.class_name,
                                   {"class_name": actor.class_name, "state_counts": Counter()})
        entry["state_counts"][actor.state] += 1
    for entry in summary.values():
        entry["state_counts"] = dict(entry["state_counts"])
    return {"cluster": {"summary": summary, "total_actors": total, "summary_by": "class"}}


def _summarize_objects(gcs: GcsClient, raise_on_missing_output: bool) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    total = total_bytes = 0
    for obj in _objects(gcs):
        total += 1
        total_bytes += obj.object_size
        entry = summary.setdefault(obj.job_id, {
            "job_id": obj.job_id, "total_objects": 0, "total_size_bytes": 0,
            "storage_counts": Counter(), "ref_type_counts": Counter()})
        entry["total_objects"] += 1
        entry["total_size_bytes"] += obj.object_size
        entry["storage_counts"][obj.storage] += 1
        entry["ref_type_counts"][obj.reference_type] += 1
    for entry in summary.values():
        entry["storage_counts"] = dict(entry["storage_counts"])
        entry["ref_type_counts"] = dict(entry["ref_type_counts"])
    return {"cluster": {"summary": summary, "total_objects": total, "total_size_bytes": total_bytes,
                        "summary_by": "job"}}


SUMMARIES: dict[str, Callable[[GcsClient, bool], dict[str, Any]]] = {
    "tasks": _summarize_tasks, "actors": _summarize_actors, "objects": _summarize_objects,
}


# ------------------------------------------------------------------ timeline
def timeline_events(gcs: GcsClient, job_hex: str | None) -> list[dict[str, Any]]:
    """Chrome-trace events ("X" slices, microseconds) of the tasks that ran: one process per
    node, one thread per worker."""
    jobs = [job_hex] if job_hex else tev.task_jobs(gcs)
    events: list[dict[str, Any]] = []
    for task in tev.read_tasks(gcs, jobs):
        if task.start_time_ms is None:
            continue
        times = {e["state"]: e["created_ms"] for e in task.events}
        start = times.get(tev.RUNNING, task.start_time_ms)
        end = times.get(tev.FINISHED, times.get(tev.FAILED, start))
        events.append({
            "cat": f"task::{task.func_or_class_name}", "name": task.name, "ph": "X",
            "pid": f"Node {task.node_id}", "tid": f"worker {task.worker_pid} ({(task.worker_id or '')[:8]})",
            "ts": round(start * 1000, 1), "dur": round(max(0.0, end - start) * 1000, 1),
            "args": {"task_id": task.task_id, "state": task.state, "job_id": task.job_id,
                     "attempt": task.attempt_number, "error_type": task.error_type},
        })
    events.sort(key=lambda e: e["ts"])
    return events
