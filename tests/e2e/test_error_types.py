"""The exceptions a caller catches, as in Ray: a task's error is its own class *and*
RayTaskError, for rayr's own error types too, with the attributes Ray users read."""

from __future__ import annotations

import pytest

import rayr
from rayr import exceptions as exc


@rayr.remote(max_retries=0)
def raise_it(kind: str):
    errors = {
        "ActorDiedError": lambda: exc.ActorDiedError("the actor died", actor_id="ab" * 16),
        "ActorUnavailableError": lambda: exc.ActorUnavailableError("unreachable", actor_id="cd" * 16),
        "OutOfMemoryError": lambda: exc.OutOfMemoryError("node ran out of memory"),
        "ObjectFetchTimedOutError": lambda: exc.ObjectFetchTimedOutError("ef" * 20, "fetch timed out"),
        "RaySystemError": lambda: exc.RaySystemError("system"),
        "GetTimeoutError": lambda: exc.GetTimeoutError("too slow"),
        "TaskCancelledError": lambda: exc.TaskCancelledError("cancelled", task_id="01" * 16),
        "WorkerCrashedError": lambda: exc.WorkerCrashedError("crashed"),
    }
    raise errors[kind]()


@pytest.mark.parametrize("kind", [
    "ActorDiedError", "ActorUnavailableError", "OutOfMemoryError", "ObjectFetchTimedOutError",
    "RaySystemError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
])
def test_rayr_errors_raised_in_a_task_are_both_classes(ray, kind):
    cls = getattr(exc, kind)
    with pytest.raises(cls) as caught:
        rayr.get(raise_it.remote(kind))
    err = caught.value
    assert isinstance(err, exc.RayTaskError) and isinstance(err, exc.RayError)
    assert type(err.cause) is cls and "raise_it" in str(err)
    if kind == "ActorDiedError":
        assert err.actor_id == "ab" * 16 and isinstance(err, exc.RayActorError)
    if kind == "ObjectFetchTimedOutError":
        assert err.object_ref_hex == "ef" * 20 and isinstance(err, exc.ObjectLostError)
    if kind == "TaskCancelledError":
        assert err.task_id == "01" * 16
    if kind == "GetTimeoutError":
        assert isinstance(err, TimeoutError)


@rayr.remote
class Doomed:
    def ping(self):
        return "pong"


@rayr.remote(max_retries=0)
def call_dead_actor(handle):
    return rayr.get(handle.ping.remote())


def test_a_dead_actor_names_itself_directly_and_through_a_task(ray):
    actor = Doomed.remote()
    assert rayr.get(actor.ping.remote()) == "pong"
    rayr.kill(actor)
    with pytest.raises(exc.ActorDiedError) as direct:
        rayr.get(actor.ping.remote(), timeout=30)
    assert direct.value.actor_id == actor._actor_id
    assert not isinstance(direct.value, exc.RayTaskError)  # the call never ran: no task error
    with pytest.raises(exc.ActorDiedError) as nested:
        rayr.get(call_dead_actor.remote(actor), timeout=30)
    assert isinstance(nested.value, exc.RayTaskError) and nested.value.actor_id == actor._actor_id


def test_errors_survive_pickling_with_their_attributes():
    import pickle

    died = pickle.loads(pickle.dumps(exc.ActorDiedError("gone", actor_id="ab")))
    assert (str(died), died.actor_id, died.error_msg) == ("gone", "ab", "gone")
    cancelled = pickle.loads(pickle.dumps(exc.TaskCancelledError("stop", task_id="01")))
    assert cancelled.task_id == "01"
