"""Fault tolerance: tasks retried after their worker dies or they raise, actors restarted.

    python examples/fault_tolerance.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import rayr as ray


@ray.remote(max_retries=2)
def crashes_once(marker: str) -> str:
    """The first attempt kills its own worker process (as an OOM kill or a segfault would)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return "finished on a retry after the worker died"


@ray.remote(max_retries=3, retry_exceptions=[ConnectionError])
def flaky(counter: str) -> str:
    """Raises twice; retried because ConnectionError is listed in retry_exceptions."""
    attempts = int(Path(counter).read_text() or 0) + 1 if os.path.exists(counter) else 1
    Path(counter).write_text(str(attempts))
    if attempts < 3:
        raise ConnectionError(f"attempt {attempts} failed")
    return f"succeeded on attempt {attempts}"


@ray.remote(max_retries=0)
def always_fails() -> None:
    raise ValueError("a bug, not worth retrying")


@ray.remote(max_restarts=1)
class Service:
    def pid(self) -> int:
        return os.getpid()

    def crash(self) -> None:
        os._exit(1)  # the actor's process dies, as after a segfault or an OOM kill


def main() -> None:
    ray.init(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        print(ray.get(crashes_once.remote(os.path.join(tmp, "crashed"))))
        print(ray.get(flaky.remote(os.path.join(tmp, "attempts"))))

    # without retries the error reaches the caller: both as RayTaskError and as its own class
    try:
        ray.get(always_fails.remote())
    except ValueError as err:
        is_task_error = isinstance(err, ray.exceptions.RayTaskError)
        print("caught:", type(err).__name__, "is a RayTaskError:", is_task_error)

    service = Service.remote()
    first = ray.get(service.pid.remote())
    try:
        ray.get(service.crash.remote())  # the call that was running fails (max_task_retries=0)
    except ray.exceptions.RayActorError as err:
        print("the running call failed:", type(err).__name__)
    second = ray.get(service.pid.remote())  # max_restarts=1: a new process takes later calls
    print("actor restarted in a new process:", first != second)
    ray.shutdown()


if __name__ == "__main__":
    main()
