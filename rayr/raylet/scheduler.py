"""The raylet's scheduling state machine: events in, actions out, no I/O.

The raylet pulls from a task stream only as many tasks as its free resources can start,
so a busy node leaves work in Redis for nodes that have room. Resources are reserved
when a task is read and returned when its worker reports it done (or dies). A worker
blocked in ``get`` gives its CPU back until it resumes, so nested tasks cannot deadlock
a node whose every CPU is held by a waiting parent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rayr import resources as res
from rayr.accelerators import gpu_amount, only_gpus, without_gpus
from rayr.resources import BUNDLE, BUNDLE_MARKER_TOTAL, bundle_resource_names

READ_CAP = 64  # most tasks pulled from one stream at once
# A default-env worker beyond the prestarted pool (started because others were blocked in
# get(), say) exits after this long idle, as Ray's do: a wide fan-out leaves no crowd behind.
IDLE_WORKER_S = 1.0


@dataclass
class QueuedTask:
    """A task read from a stream: its origin (to ACK or re-queue it) and its encoded spec."""

    stream: str  # "" for an actor restart, which has no stream entry
    entry_id: bytes
    spec: bytes
    shape: str
    request: dict[str, float]  # resources to run it (to place it, for an actor creation)
    actor: str = ""  # actor id hex for an actor creation or restart
    lifetime: dict[str, float] = field(default_factory=dict)  # actor: resources held while alive
    restart: bool = False
    env: str = ""  # runtime env hash; only a worker started in that env may run it
    devices: str = ""  # GPU ids it was given when reserved, e.g. "0,1"
    gpu_share: float = 0.0  # how much of each of those it holds (1 for whole GPUs)

    @property
    def kind(self) -> str:
        """The workers that may run it: of its env, seeing exactly its GPUs."""
        return worker_kind(self.env, self.devices)


def worker_kind(env: str, devices: str) -> str:
    """A worker's kind: its runtime env hash, and the GPU ids it sees if any (``<env>#<ids>``)."""
    return f"{env}#{devices}" if devices else env


def split_kind(kind: str) -> tuple[str, str]:
    """(runtime env hash, GPU ids) of a worker kind."""
    env, _, devices = kind.partition("#")
    return env, devices


def _is_creation(key: str) -> bool:
    return key.removeprefix(res.TARGET_MARK).startswith(res.ACTOR_SHAPE_MARK)


@dataclass
class Dispatch:
    worker: str
    task: QueuedTask


@dataclass
class Scheduler:
    """Resource accounting, the task queue and worker assignment of one node."""

    total: dict[str, float]
    max_workers: int
    # free resources; negative for a moment when a blocked worker resumes on a full node
    available: dict[str, float] = field(default_factory=dict)
    # shapes with a stream in Redis that this node's totals can ever fit
    shapes: set[str] = field(default_factory=set)
    known_shapes: set[str] = field(default_factory=set)  # every shape seen, fitting or not
    # placement group -> its bundles here: (bundle index, resources), held out of `available`
    bundles: dict[str, list[tuple[int, dict[str, float]]]] = field(default_factory=dict)
    # read and reserved, waiting for an idle worker; FIFO
    ready: deque[QueuedTask] = field(default_factory=deque)
    # read but not reserved (more arrived than fit): waits for resources, blocks reading
    overflow: deque[QueuedTask] = field(default_factory=deque)
    idle: list[str] = field(default_factory=list)
    idle_since: dict[str, float] = field(default_factory=dict)  # idle worker -> since when
    running: dict[str, QueuedTask] = field(default_factory=dict)
    # running workers blocked in get(): their resources are released meanwhile
    blocked: set[str] = field(default_factory=set)
    starting: int = 0  # workers launched but not yet ready (of every env)
    env_starting: dict[str, int] = field(default_factory=dict)  # of those, per kind (not "")
    worker_env: dict[str, str] = field(default_factory=dict)  # ready worker -> its kind (not "")
    live: set[str] = field(default_factory=set)  # ready pool workers (not actors)
    # worker -> resources its actor holds; actor workers leave the pool for good
    actors: dict[str, dict[str, float]] = field(default_factory=dict)
    min_pool: int = 1  # idle-or-busy pool workers kept around (prestarted)
    gpu_ids: list[str] = field(default_factory=list)  # the node's GPU ids, handed out whole or shared
    # tasks read beyond what fits now, so a finishing worker gets its next task without a
    # Redis round trip; small, because what this node holds other nodes cannot take
    prefetch: int = 0
    # GPU id -> the share of it given out (tasks, actors, a placement group's tasks alike;
    # `available` already keeps their sum within the node's GPUs)
    gpu_used: dict[str, float] = field(default_factory=dict)
    actor_tasks: dict[str, QueuedTask] = field(default_factory=dict)  # actor worker -> its creation

    def __post_init__(self) -> None:
        if not self.available:
            self.available = dict(self.total)

    # ---------------------------------------------------------------- shapes
    def add_shapes(self, keys: set[str]) -> bool:
        """Track shapes this node could run; True if any is new."""
        self.known_shapes |= keys
        return self._refilter_shapes()

    def _refilter_shapes(self) -> bool:
        fitting = {k for k in self.known_shapes if res.fits(self.total, res.parse_shape(k))}
        new = bool(fitting - self.shapes)
        self.shapes = fitting
        return new

    # ------------------------------------------------------- placement groups
    def reserve_bundles(self, pg: str, bundles: list[tuple[int, dict[str, float]]]) -> bool:
        """Set aside resources for a group's bundles on this node, as Ray does: each bundle's
        resources become ``<name>_group_<index>_<pg>`` and ``<name>_group_<pg>`` here, which
        only the group's tasks ask for. False (nothing changed) if they do not fit now."""
        if pg in self.bundles:
            return True
        need: dict[str, float] = {}
        for _, bundle in bundles:
            res.add(need, bundle)
        if not res.fits(self.available, need):
            return False
        res.subtract(self.available, need)
        for index, bundle in bundles:
            for name, amount in {**bundle, BUNDLE: BUNDLE_MARKER_TOTAL}.items():
                for renamed in bundle_resource_names(name, pg, index):
                    self.total[renamed] = self.total.get(renamed, 0.0) + amount
                    self.available[renamed] = self.available.get(renamed, 0.0) + amount
        self.bundles[pg] = bundles
        self._refilter_shapes()
        return True

    def release_bundles(self, pg: str) -> None:
        """Give a group's bundles back (the group was removed or could not be placed)."""
        bundles = self.bundles.pop(pg, None)
        if bundles is None:
            return
        for index, bundle in bundles:
            res.add(self.available, bundle)
            for name, amount in {**bundle, BUNDLE: BUNDLE_MARKER_TOTAL}.items():
                for renamed in bundle_resource_names(name, pg, index):
                    for table in (self.total, self.available):
                        table[renamed] = table.get(renamed, 0.0) - amount
                        if abs(table[renamed]) < 1e-9:
                            del table[renamed]
        self._refilter_shapes()
        self._reserve()

    def read_budget(self, in_transit: Sequence[QueuedTask] = ()) -> dict[str, int]:
        """How many tasks of each shape to pull from Redis now; ``in_transit`` are tasks
        already read that have not reached ``on_tasks`` yet (they will take room too)."""
        room = self.prefetch - len(self.overflow)
        if self.overflow and room <= 0:
            return {}
        available = self.available
        if in_transit:
            available = dict(available)
            for task in in_transit:
                res.subtract(available, task.request)
        budget = {}
        # workers blocked in get() lend their slot, as they lend their CPUs
        busy = len(self.running) + len(self.ready) + len(in_transit) - len(self.blocked)
        slots = self.max_workers - busy
        for key in self.shapes:
            request = res.parse_shape(key)
            if request:
                fit = 0 if self.overflow else res.how_many_fit(available, request, READ_CAP)
                if not _is_creation(key):
                    # no more than the workers can start: a 0-CPU shape (a sliver of a custom
                    # resource) would otherwise be read whole and dispatched one by one, where
                    # leased workers take the rest straight from the stream
                    fit = min(fit, max(slots, 0))
                n = fit + (max(room, 0) if fit or self.running or self.ready else 0)
            else:
                n = min(READ_CAP, slots)
            if n > 0:
                budget[key] = min(n, READ_CAP)
        return budget

    # ---------------------------------------------------------------- events
    def on_tasks(self, tasks: list[QueuedTask]) -> None:
        for task in tasks:
            if task.actor and self.overflow and not self.overflow[-1].actor:
                # an actor creation goes ahead of queued plain tasks (after earlier creations):
                # behind a backlog of tasks of its shape it would wait for all of them
                at = next(i for i, queued in enumerate(self.overflow) if not queued.actor)
                self.overflow.insert(at, task)
            else:
                self.overflow.append(task)
        self._reserve()

    def on_worker_started(self, env: str = "") -> None:
        self.starting += 1
        if env:
            self.env_starting[env] = self.env_starting.get(env, 0) + 1

    def on_worker_ready(self, worker: str, env: str = "") -> None:
        self.on_worker_failed_to_start(env)
        self.live.add(worker)
        self._set_idle(worker)
        if env:
            self.worker_env[worker] = env

    def _take_out(self, worker: str) -> None:
        """An idle worker leaves the pool (it is told to exit)."""
        self.idle.remove(worker)
        self.idle_since.pop(worker, None)
        self.live.discard(worker)
        self.worker_env.pop(worker, None)

    def on_worker_failed_to_start(self, env: str = "") -> None:
        self.starting = max(0, self.starting - 1)
        if env:
            left = self.env_starting.get(env, 0) - 1
            if left > 0:
                self.env_starting[env] = left
            else:
                self.env_starting.pop(env, None)

    def on_task_done(self, worker: str) -> QueuedTask | None:
        task = self.running.pop(worker, None)
        if task is not None:
            self._release(worker, task)
            self._set_idle(worker)
            self._reserve()
        return task

    def leased_streams(self, in_transit: Sequence[QueuedTask] = ()) -> set[str]:
        """Streams a worker holds a lease on and may be waiting on right now (not blocked in
        get()), or will soon (its task is read, not yet dispatched): that worker takes their
        next task itself, with what it has warm (a big argument mapped, imports done), if the
        reader leaves it the first claim."""
        blocked = self.blocked
        streams = {task.stream for worker, task in self.running.items()
                   if not task.actor and task.stream and worker not in blocked}
        streams.update(task.stream for task in (*self.ready, *in_transit) if not task.actor and task.stream)
        return streams

    def _set_idle(self, worker: str) -> None:
        self.idle.append(worker)
        self.idle_since[worker] = time.monotonic()

    def on_worker_blocked(self, worker: str) -> None:
        task = self.running.get(worker)
        if task is not None and worker not in self.blocked:
            self.blocked.add(worker)
            # its CPUs go back meanwhile, not its GPUs: the process keeps its devices
            res.add(self.available, without_gpus(task.request))
            self._reserve()

    def on_worker_unblocked(self, worker: str) -> None:
        task = self.running.get(worker)
        if task is not None and worker in self.blocked:
            self.blocked.discard(worker)
            res.subtract(self.available, without_gpus(task.request))

    def on_actor_ready(self, worker: str) -> None:
        """The creation task became a live actor: trade placement for lifetime resources."""
        task = self.running.pop(worker, None)
        if task is None:
            return
        held = task.devices if gpu_amount(task.lifetime) > 0 else ""
        task.devices = ""  # the actor keeps the GPUs it was placed with for its life
        self._release(worker, task)
        if held:
            task.devices = held
            self.actor_tasks[worker] = task
        res.subtract(self.available, task.lifetime)
        self.actors[worker] = task.lifetime
        self.live.discard(worker)
        self.worker_env.pop(worker, None)
        self._reserve()

    def on_actor_died(self, worker: str) -> None:
        res.add(self.available, self.actors.pop(worker, {}))
        creation = self.actor_tasks.pop(worker, None)
        if creation is not None:
            self._free_devices(creation)
        self._reserve()

    def on_worker_retiring(self, worker: str) -> None:
        """The worker finished its task and is about to exit: not idle, not live."""
        task = self.running.pop(worker, None)
        if task is not None:
            self._release(worker, task)
            self._reserve()
        self.live.discard(worker)
        self.worker_env.pop(worker, None)

    def on_worker_died(self, worker: str) -> QueuedTask | None:
        """Forget the worker; returns the task it was running, if any (its resources freed)."""
        self.live.discard(worker)
        self.worker_env.pop(worker, None)
        if worker in self.idle:
            self.idle.remove(worker)
        self.idle_since.pop(worker, None)
        task = self.running.pop(worker, None)
        if task is not None:
            self._release(worker, task)
            self._reserve()
        return task

    def remove_queued(self, match: Callable[[QueuedTask], bool]) -> QueuedTask | None:
        """Take a task that has not started out of the queues (cancellation)."""
        for task in self.ready:
            if match(task):
                self.ready.remove(task)
                res.add(self.available, task.request)
                self._free_devices(task)
                self._reserve()
                return task
        for task in self.overflow:
            if match(task):
                self.overflow.remove(task)
                return task
        return None

    def take_env_tasks(self, env: str) -> list[QueuedTask]:
        """Remove every queued task of a runtime env (its setup failed); resources freed."""
        taken = [t for t in self.ready if t.env == env]
        if taken:
            self.ready = deque(t for t in self.ready if t.env != env)
            for task in taken:
                res.add(self.available, task.request)
                self._free_devices(task)
        later = [t for t in self.overflow if t.env == env]
        if later:
            self.overflow = deque(t for t in self.overflow if t.env != env)
        self._reserve()
        return taken + later

    # --------------------------------------------------------------- actions
    def dispatches(self) -> list[Dispatch]:
        """Pair ready tasks with idle workers of the same runtime env, in FIFO order."""
        out = []
        waiting: deque[QueuedTask] = deque()
        while self.ready and self.idle:
            task = self.ready.popleft()
            worker = self._idle_worker(task.kind)
            if worker is None:  # none of its env is idle: it keeps its place
                waiting.append(task)
                continue
            self.running[worker] = task
            out.append(Dispatch(worker, task))
        if waiting:
            waiting.extend(self.ready)
            self.ready = waiting
        return out

    def _idle_worker(self, env: str) -> str | None:
        """The most recently idle worker of kind ``env`` (the longest idle are the ones to retire)."""
        worker = None
        if not self.worker_env:  # the common case: every worker is a default one
            worker = self.idle.pop() if not env and self.idle else None
        else:
            for i in range(len(self.idle) - 1, -1, -1):
                if self.worker_env.get(self.idle[i], "") == env:
                    worker = self.idle.pop(i)
                    break
        if worker is not None:
            self.idle_since.pop(worker, None)
        return worker

    def workers_to_start(self) -> int:
        """How many more default workers to launch (see :meth:`plan_workers`)."""
        return self.plan_workers()[0].get("", 0)

    def _retire_idle_defaults(self, now: float) -> list[str]:
        """Default workers beyond the prestarted pool idle for IDLE_WORKER_S, taken out of it."""
        retire: list[str] = []
        spare = sum(1 for w in self.live if w not in self.worker_env) - self.min_pool
        for worker in list(self.idle):  # the longest idle first
            if spare <= 0:
                break
            if worker not in self.worker_env and now - self.idle_since.get(worker, now) >= IDLE_WORKER_S:
                retire.append(worker)
                self._take_out(worker)
                spare -= 1
        return retire

    def plan_workers(self, now: float | None = None) -> tuple[dict[str, int], list[str]]:
        """({env: workers to launch}, idle workers to retire now).

        Tasks waiting for a worker of their env come first, then the prestarted pool of default
        workers. When ``max_workers`` leaves too little room, idle workers that no waiting
        task of their env needs are retired (taken out of the pool here) to make some; with
        ``now``, so are default workers beyond the pool idle for IDLE_WORKER_S.
        """
        need: dict[str, int] = {}
        for task in self.ready:
            need[task.kind] = need.get(task.kind, 0) + 1
        idle: dict[str, int] = {}
        for worker in self.idle:
            env = self.worker_env.get(worker, "")
            idle[env] = idle.get(env, 0) + 1
        starting = dict(self.env_starting)
        starting[""] = self.starting - sum(self.env_starting.values())
        want = {}
        for env, n in need.items():
            if n - idle.get(env, 0) - starting.get(env, 0) > 0:
                want[env] = n - idle.get(env, 0) - starting.get(env, 0)
        # Workers blocked in get() do not count: they wait on tasks that need workers of
        # their own, so counting them would deadlock a fan-out wider than the cap.
        room = self.max_workers - len(self.live - self.blocked) - self.starting
        retire: list[str] = []
        for worker in list(self.idle):
            if sum(want.values()) <= room:
                break
            env = self.worker_env.get(worker, "")
            if idle[env] > need.get(env, 0):  # a spare: no waiting task of its env needs it
                idle[env] -= 1
                retire.append(worker)
                self._take_out(worker)
                room += 1
        if now is not None and not self.ready:
            retire += self._retire_idle_defaults(now)
        plan = {}
        for env, n in want.items():
            if min(n, room) > 0:
                plan[env] = min(n, room)
                room -= plan[env]
        default_live = sum(1 for w in self.live if w not in self.worker_env)
        pool = self.min_pool - default_live - starting[""] - plan.get("", 0)
        if pool > 0 and room > 0:
            plan[""] = plan.get("", 0) + min(pool, room)
        return plan, retire

    # -------------------------------------------------------------- internal
    def _release(self, worker: str, task: QueuedTask) -> None:
        if worker in self.blocked:
            self.blocked.discard(worker)  # its resources but GPUs were already given back
            res.add(self.available, only_gpus(task.request))
        else:
            res.add(self.available, task.request)
        self._free_devices(task)

    def _reserve(self) -> None:
        while self.overflow and res.fits(self.available, self.overflow[0].request):
            task = self.overflow[0]
            if self.gpu_ids and not self._give_devices(task):
                break  # enough GPU in sum, but no id has the share it needs: it waits
            self.overflow.popleft()
            res.subtract(self.available, task.request)
            self.ready.append(task)

    # ------------------------------------------------------------------ GPUs
    def _give_devices(self, task: QueuedTask) -> bool:
        """Pick GPU ids for a task that asks for GPUs, as Ray does: whole GPUs for amounts of
        one or more, a share of one GPU (packed onto the fullest that fits) below one. Ids an
        idle worker of the task's env already sees come first, so its process is reused."""
        amount = gpu_amount(task.request)
        if amount <= 0:
            return True
        env = task.env
        kinds = (split_kind(self.worker_env.get(worker, "")) for worker in self.idle)
        reusable = {gpu for kind_env, devices in kinds if kind_env == env and devices
                    for gpu in devices.split(",")}

        def order(gpu: str) -> tuple[bool, int]:
            return (gpu not in reusable, self.gpu_ids.index(gpu))

        if amount >= 1:
            free = sorted((g for g in self.gpu_ids if self.gpu_used.get(g, 0.0) < 1e-9), key=order)
            whole = round(amount)
            if len(free) < whole:
                return False
            picked, share = sorted(free[:whole], key=self.gpu_ids.index), 1.0
        else:
            fitting = [g for g in self.gpu_ids if self.gpu_used.get(g, 0.0) + amount <= 1 + 1e-9]
            if not fitting:
                return False
            best = min(fitting, key=lambda g: (-self.gpu_used.get(g, 0.0), *order(g)))
            picked, share = [best], amount
        for gpu in picked:
            self.gpu_used[gpu] = self.gpu_used.get(gpu, 0.0) + share
        task.devices, task.gpu_share = ",".join(picked), share
        return True

    def _free_devices(self, task: QueuedTask) -> None:
        if not task.devices:
            return
        for gpu in task.devices.split(","):
            left = self.gpu_used.get(gpu, 0.0) - task.gpu_share
            if left > 1e-9:
                self.gpu_used[gpu] = left
            else:
                self.gpu_used.pop(gpu, None)
        task.devices, task.gpu_share = "", 0.0
