"""Every Redis key, stream, consumer group and channel name rayr uses, in one place.

The tables share the prefix ``rayr:{<cluster>}:``. The braces are a Redis Cluster hash tag:
those keys hash to one slot, so Lua scripts may touch any of them atomically, and several
rayr clusters can share one Redis. Objects, inboxes, task streams, actor mailboxes, object
transfers and task events carry spread tags ``{<cluster>/<n>}`` instead, so that on a Redis
Cluster their load lands on other masters too. An object's tag is its owner's: the owner
writes its inbox's tag into the ids it makes (``object_tag``), so storing a result and
telling its owner stay one script on one slot; its task streams carry the same tag.
"""

from __future__ import annotations

import zlib

TASK_GROUP = "raylets"  # consumer group every raylet reads task streams through
ACTOR_GROUP = "actor"  # consumer group on an actor's mailbox; each incarnation reads as actor-<worker>

# The key families the Lua scripts build from the prefix (the keys a script touches, such as
# one inbox per waiter, are only known inside it). gcs/scripts.py fills its <<name>>
# placeholders from this table, and the Keys methods below use the same entries, so the two
# cannot drift apart.
FAMILIES = {
    "obj": "obj:",
    "objw": "objw:",
    "objr": "objr:",
    "objc": "objc:",
    "inbox": "inbox:",
    "actor": "actor:",
    "actor_mb": "actor_mb:",
    "actor_ctl": "actor_ctl:",
    "actor_names": "actor_names:",
    "job_actors": "job_actors:",
    "actor_events": "actor_events",
    "dead_actors": "dead_actors",
    "actors": "actors",
}
_F = FAMILIES

# How many spread tags a cluster's keys use (Keys.spread_prefix): enough that on a Redis
# Cluster of a few masters each master serves some of them.
SPREAD_TAGS = 16


def spread_tag(id_hex: str) -> int:
    """The spread tag of the keys that belong to one id: an object's transfer keys (by the
    object id), a job's task events (by the job id), a process's inbox (by its worker id)."""
    return zlib.crc32(id_hex.encode()) % SPREAD_TAGS


def consumer_node(consumer: str | bytes) -> str:
    """The node of a task-stream consumer: ``<node>`` (its raylet) or ``<node>.<worker>``
    (a leased worker)."""
    name = consumer.decode() if isinstance(consumer, bytes) else consumer
    return name.partition(".")[0]


# An object id's byte 4 (the first after the job id) carries a spread tag in its low four bits:
# an owner sets it to its inbox's tag in every id it makes (TaskSubmitter.unique_suffix). The
# Lua scripts read the same hex digit (gcs/scripts.py, ``tag_of``).
OBJECT_TAG_DIGIT = 9


def object_tag(object_hex: str) -> int:
    """The spread tag of an object's keys (record, waiters, holders, contents)."""
    return int(object_hex[OBJECT_TAG_DIGIT], 16)


def with_object_tag(suffix: bytes, tag: int) -> bytes:
    """``suffix`` (the part of an id after the job id) with its first byte carrying ``tag``."""
    return bytes(((suffix[0] & 0xF0) | tag,)) + suffix[1:]


class Keys:
    """Key names for one rayr cluster. Ids are passed as hex strings."""

    __slots__ = ("prefix", "cluster")

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.prefix = f"rayr:{{{cluster}}}:"

    # -- spread keys: what one command (never a script with other keys) touches may carry a
    # tag of its own, so that on a Redis Cluster its load goes to other masters than the
    # tables'. ``/`` cannot occur in a cluster name, so ``rayr:{<cluster>/*`` covers them all.
    def spread_prefix(self, index: int) -> str:
        """The prefix of keys under spread tag ``index`` (0 .. SPREAD_TAGS-1)."""
        return f"rayr:{{{self.cluster}/{index}}}:"

    @property
    def spread_pattern(self) -> str:
        """A glob matching every spread key of this cluster (ACL rules, SCAN)."""
        return f"rayr:{{{self.cluster}/*"

    @property
    def spread_base(self) -> str:
        """What the Lua scripts complete to a spread prefix: ``base .. n .. '}:'``."""
        return f"rayr:{{{self.cluster}/"

    def spread_glob(self, suffix: str) -> str:
        """A SCAN glob for the spread keys, under any tag, whose name after the prefix matches
        ``suffix`` (itself a glob)."""
        return f"rayr:{{{self.cluster}/*}}:{suffix}"

    def tag_of(self, key: str) -> int | None:
        """The spread tag of a key of this cluster (None: a tables' key)."""
        base = self.spread_base
        if not key.startswith(base):
            return None
        return int(key[len(base):key.index("}", len(base))])

    # -- node table: a hash per node, a set of all node ids, a TTL'd liveness key
    @property
    def nodes(self) -> str:
        return self.prefix + "nodes"

    def node(self, node_hex: str) -> str:
        return f"{self.prefix}node:{node_hex}"

    def node_alive(self, node_hex: str) -> str:
        return f"{self.prefix}node_alive:{node_hex}"

    @property
    def heartbeat_channel(self) -> str:
        return self.prefix + "heartbeats"

    @property
    def node_channel(self) -> str:
        """Node state changes (ALIVE/DEAD), published as a hint; the node hash is the truth."""
        return self.prefix + "node_events"

    @property
    def autoscaler_config(self) -> str:
        """The cluster config `rayr up` published; the monitor autoscales while it exists."""
        return self.prefix + "autoscaler:config"

    # -- job table
    @property
    def job_counter(self) -> str:
        return self.prefix + "job_counter"

    @property
    def jobs(self) -> str:
        return self.prefix + "jobs"

    def job(self, job_hex: str) -> str:
        return f"{self.prefix}job:{job_hex}"

    # -- function table: cloudpickled functions, exported once per job
    def function(self, job_hex: str, digest: str) -> str:
        return f"{self.prefix}fn:{job_hex}:{digest}"

    def functions_of_job(self, job_hex: str) -> str:
        return f"{self.prefix}fn:{job_hex}:*"

    # -- object table: one string per object (format: gcs/records.py), and its waiters,
    # holders and contents, all under the object's spread tag (its owner's)
    def object_prefix(self, object_hex: str) -> str:
        """The prefix of an object's keys."""
        return self.spread_prefix(object_tag(object_hex))

    def object(self, object_hex: str) -> str:
        return f"{self.object_prefix(object_hex)}{_F['obj']}{object_hex}"

    def object_holders(self, object_hex: str) -> str:
        """Set of holders besides the owner: borrowing inboxes and ``o:<container hex>``."""
        return f"{self.object_prefix(object_hex)}{_F['objr']}{object_hex}"

    def object_contents(self, object_hex: str) -> str:
        """List of the refs an object contains (id + hex + owner's inbox key each)."""
        return f"{self.object_prefix(object_hex)}{_F['objc']}{object_hex}"

    def object_waiters(self, object_hex: str) -> str:
        """Set of the inbox keys to notify when the object is stored."""
        return f"{self.object_prefix(object_hex)}{_F['objw']}{object_hex}"

    def object_globs_of_job(self, job_hex: str) -> list[str]:
        """SCAN globs (``spread_glob``) of the job's object keys: records, waiters, holders,
        contents."""
        return [f"{_F[family]}{job_hex}*" for family in ("obj", "objw", "objr", "objc")]

    # -- task queues: per resource shape (any node that fits pulls) and per node (targeted),
    # each under its submitter's spread tag (its inbox's, as its objects are), so that on a
    # Redis Cluster each owner's task traffic goes to its own master
    @property
    def task_streams(self) -> str:
        """Set of the names of every task stream (shared and targeted) raylets read."""
        return self.prefix + "task_streams"

    def shape_stream(self, shape: str, tag: int) -> str:
        return f"{self.spread_prefix(tag)}tasks:shape:{shape}"

    def node_stream(self, node_hex: str) -> str:
        """The node's control stream: new-stream pokes, kills, cancels, pulls, job ends."""
        return f"{self.prefix}tasks:node:{node_hex}"

    def task_stream(self, key: str, node_hex: str, tag: int) -> str:
        """The stream behind a scheduler key for submitters of spread tag ``tag``: shared
        (``CPU=1``), actor-creation (``@CPU=1``), or targeted at ``node_hex`` (``~CPU=1``,
        ``~@CPU=1``)."""
        if key.startswith("~"):
            return f"{self.spread_prefix(tag)}tasks:node:{node_hex}:{key[1:]}"
        return self.shape_stream(key, tag)

    def parse_task_stream(self, stream: str) -> tuple[str, str, int]:
        """(scheduler key, node it is targeted at or "", spread tag) of a task stream's name."""
        tag = self.tag_of(stream)
        if tag is None:
            raise ValueError(f"{stream!r} is not a task stream of rayr cluster {self.cluster!r}")
        rest = stream[len(self.spread_prefix(tag)):]
        if rest.startswith("tasks:shape:"):
            return rest[len("tasks:shape:"):], "", tag
        if rest.startswith("tasks:node:"):
            node, _, key = rest[len("tasks:node:"):].partition(":")
            return "~" + key, node, tag
        raise ValueError(f"{stream!r} is not a task stream of rayr cluster {self.cluster!r}")

    # -- result inboxes: one list per process that owns or waits on objects, under the
    # spread tag of the process's worker id (which it writes into the ids it makes)
    def inbox(self, worker_hex: str) -> str:
        return f"{self.spread_prefix(spread_tag(worker_hex))}{_F['inbox']}{worker_hex}"

    def inbox_taken(self, worker_hex: str) -> str:
        """List of the messages the process took from its inbox and may not have handled yet
        (a reply lost to a dropped connection): read again after any Redis error."""
        return f"{self.spread_prefix(spread_tag(worker_hex))}inbox_taken:{worker_hex}"

    def inbox_keys(self, worker_hex: str) -> list[str]:
        """Both lists of a process's inbox, deleted together when the process is gone."""
        return [self.inbox(worker_hex), self.inbox_taken(worker_hex)]

    # -- demand the cluster cannot meet (for status and the autoscaler)
    @property
    def infeasible(self) -> str:
        return self.prefix + "infeasible"

    # -- actor table: a hash per actor, a name index per namespace, a mailbox stream each
    def actor(self, actor_hex: str) -> str:
        return f"{self.prefix}{_F['actor']}{actor_hex}"

    @property
    def actor_key_prefix(self) -> str:
        return self.prefix + _F["actor"]

    def actor_mailbox(self, actor_hex: str) -> str:
        """Stream of method calls; read by the actor's worker through ACTOR_GROUP. Under the
        actor's spread tag, as is its control stream."""
        return f"{self.spread_prefix(spread_tag(actor_hex))}{_F['actor_mb']}{actor_hex}"

    def actor_names(self, namespace: str) -> str:
        """Hash of actor name -> actor id hex within one namespace."""
        return f"{self.prefix}{_F['actor_names']}{namespace}"

    @property
    def actor_names_prefix(self) -> str:
        return self.prefix + _F["actor_names"]

    def job_actors(self, job_hex: str) -> str:
        """Set of the job's non-detached actors, killed when the job ends."""
        return f"{self.prefix}{_F['job_actors']}{job_hex}"

    @property
    def actor_channel(self) -> str:
        """Actor state changes (``<actor hex>:<state>``), a hint; the hash is the truth."""
        return self.prefix + _F["actor_events"]

    # -- worker output, published per job for drivers that show it
    def job_logs(self, job_hex: str) -> str:
        return f"{self.prefix}logs:{job_hex}"

    def actor_control(self, actor_hex: str) -> str:
        """Stream of control messages (cancellations) the actor reads beside its mailbox."""
        return f"{self.spread_prefix(spread_tag(actor_hex))}{_F['actor_ctl']}{actor_hex}"

    # -- cancellation markers: set by the owner, read where the task runs
    def cancel_marker(self, task_hex: str) -> str:
        return f"{self.prefix}cancel:{task_hex}"

    # -- cross-node transfers: chunks of one object on their way to one node, under the
    # object's spread tag (the heaviest byte load on Redis, off the tables' master)
    def transfer(self, object_hex: str, dest: str) -> str:
        return f"{self.spread_prefix(spread_tag(object_hex))}xfer:{object_hex}:{dest}"

    def transfer_lock(self, object_hex: str, dest: str) -> str:
        """Held by the one process pulling an object to ``dest``; others wait for it."""
        return f"{self.spread_prefix(spread_tag(object_hex))}xferlock:{object_hex}:{dest}"

    # -- placement groups: a hash each, the ones waiting for room, names per namespace
    def placement_group(self, pg_hex: str) -> str:
        return f"{self.prefix}pg:{pg_hex}"

    @property
    def pending_placement_groups(self) -> str:
        """List of groups the monitor has yet to place (FIFO)."""
        return self.prefix + "pg_pending"

    def placement_group_names(self, namespace: str) -> str:
        return f"{self.prefix}pg_names:{namespace}"

    def placement_group_reply(self, pg_hex: str) -> str:
        """Where raylets answer the monitor's bundle reservations for one group."""
        return f"{self.prefix}pg_reply:{pg_hex}"

    @property
    def placement_group_key_prefix(self) -> str:
        return self.prefix + "pg:"

    @property
    def monitor_stream(self) -> str:
        """Wakes the head monitor: a group to place or to remove."""
        return self.prefix + "monitor"

    @property
    def running_jobs(self) -> str:
        """Jobs whose driver has not ended them yet (the monitor watches their liveness)."""
        return self.prefix + "running_jobs"

    def job_alive(self, job_hex: str) -> str:
        """TTL'd key a driver refreshes while it lives."""
        return f"{self.prefix}job_alive:{job_hex}"

    # -- history: ended jobs, dead actors and dead nodes by end time; the monitor deletes the
    # oldest beyond the settings' history_max_* so the tables stay bounded
    @property
    def ended_jobs(self) -> str:
        return self.prefix + "ended_jobs"

    @property
    def gone_workers(self) -> str:
        """Worker processes that exited, by exit time: results of tasks they had started land in
        their inbox later, so the monitor deletes it again for a while."""
        return self.prefix + "gone_workers"

    @property
    def ended_drivers(self) -> str:
        """Drivers of ended jobs: results of their tasks that finish later land in their inbox,
        which the monitor keeps deleting until the job leaves the history."""
        return self.prefix + "ended_drivers"

    @property
    def dead_actors(self) -> str:
        return self.prefix + _F["dead_actors"]

    @property
    def actors(self) -> str:
        """Set of every actor id in the actor table (trimmed with it)."""
        return self.prefix + _F["actors"]

    # -- task events: per job, what owners and executors saw of each task (rayr.util.state),
    # under the job's spread tag: only their own script and reads touch them
    def task_events_owner(self, job_hex: str) -> str:
        """Hash: task id (16 raw bytes) -> the owner's view (submission, pending states)."""
        return f"{self.spread_prefix(spread_tag(job_hex))}tev:{job_hex}"

    def task_events_exec(self, job_hex: str) -> str:
        """Hash: task id (16 raw bytes) -> the executor's view (node, pid, running, end)."""
        return f"{self.spread_prefix(spread_tag(job_hex))}tex:{job_hex}"

    def task_events_dropped(self, job_hex: str) -> str:
        """Counter: the job's views dropped because its tables were full."""
        return f"{self.spread_prefix(spread_tag(job_hex))}tevd:{job_hex}"

    def task_events_keys(self, job_hex: str) -> list[str]:
        """The job's tables and counter, expired and deleted together."""
        return [self.task_events_owner(job_hex), self.task_events_exec(job_hex),
                self.task_events_dropped(job_hex)]

    def task_events_ended(self, job_hex: str) -> str:
        """Set (expiring) once the job ended: views written later expire with the rest."""
        return f"{self.spread_prefix(spread_tag(job_hex))}teve:{job_hex}"

    def log_reply(self, token: str) -> str:
        """List: a raylet's answer to one log request (expires soon after)."""
        return f"{self.prefix}logreply:{token}"

    @property
    def dead_nodes(self) -> str:
        return self.prefix + "dead_nodes"

    def driver_client(self, job_hex: str) -> str:
        """The name (CLIENT SETNAME) of a driver's liveness connection: while Redis lists a
        client of that name, the driver's process is alive, however long it holds the GIL."""
        return f"{self.prefix}driver:{job_hex}"

    # -- runtime envs: packaged files and resolved envs, each stored once under its hash
    def package(self, digest: str) -> str:
        """A zip of a working_dir or py_modules entry (``pkg://<digest>``)."""
        return f"{self.prefix}pkg:{digest}"

    def runtime_env(self, digest: str) -> str:
        """A resolved runtime env (JSON); tasks name it by this hash in their shape."""
        return f"{self.prefix}renv:{digest}"

    # -- submitted jobs (``rayr job submit``), run by the head's job supervisor
    @property
    def submissions(self) -> str:
        """Sorted set of submission ids by submission time."""
        return self.prefix + "jobsubs"

    def submission(self, submission_id: str) -> str:
        """Hash: entrypoint, status, message, runtime_env, driver pid and exit code, times."""
        return f"{self.prefix}jobsub:{submission_id}"

    def submission_logs(self, submission_id: str) -> str:
        """Stream of the driver's output chunks (capped), readable after the job ends."""
        return f"{self.prefix}jobsub_logs:{submission_id}"

    @property
    def submission_queue(self) -> str:
        """List of requests for the supervisor: ``run:<id>`` and ``stop:<id>``."""
        return self.prefix + "jobsub_queue"

    @property
    def supervisor_alive(self) -> str:
        """TTL'd key the job supervisor refreshes while it runs."""
        return self.prefix + "jobsub_supervisor"

    @property
    def durable_mark(self) -> str:
        """A counter each durable registration bumps before its WAIT (see GcsClient.durable)."""
        return self.prefix + "durable"

    # -- dashboard and metrics
    @property
    def dashboard(self) -> str:
        """Hash the head's dashboard writes when it listens: url, metrics_url, pid, auth."""
        return self.prefix + "dashboard"

    @property
    def metrics_index(self) -> str:
        """Set of the processes that reported rayr.util.metrics values (their ids)."""
        return self.prefix + "metrics"

    def metrics(self, process: str) -> str:
        """Hash of one process's metric series (series key -> JSON), expiring after it is gone."""
        return f"{self.prefix}metrics:{process}"
