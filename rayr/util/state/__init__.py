"""Ray's ``ray.util.state``: list, get and summarize what a cluster runs.

    from rayr.util.state import list_tasks, list_actors
    list_tasks(filters=[("state", "=", "RUNNING")], limit=10)

Tasks come from task events (on unless ``RAYR_TASK_EVENTS=0``); everything else from the GCS
tables in Redis, so these work from any process that reaches the cluster's Redis.
"""

from rayr.util.state.api import (
    get_actor,
    get_node,
    get_objects,
    get_placement_group,
    get_task,
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_objects,
    summarize_tasks,
)
from rayr.util.state.common import (
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    RayStateApiException,
    TaskState,
    WorkerState,
)

__all__ = [
    "ActorState", "JobState", "NodeState", "ObjectState", "PlacementGroupState", "RayStateApiException",
    "TaskState", "WorkerState", "get_actor", "get_node", "get_objects", "get_placement_group", "get_task",
    "list_actors", "list_jobs", "list_nodes", "list_objects", "list_placement_groups", "list_tasks",
    "list_workers", "summarize_actors", "summarize_objects", "summarize_tasks",
]
