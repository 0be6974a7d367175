"""Programs a user runs: the README demo and an unchanged Ray Core script."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[2]

RAY_SCRIPT = textwrap.dedent(
    """
    import time
    import numpy as np
    import rayr as ray

    ray.init(num_cpus=2)

    @ray.remote
    def f(x):
        return x * 2

    @ray.remote(num_returns=2)
    def split(x):
        return x, -x

    @ray.remote
    def total(*xs):
        return sum(xs)

    refs = [f.remote(i) for i in range(10)]
    assert ray.get(refs) == [2 * i for i in range(10)]
    a, b = split.remote(5)
    assert ray.get(total.remote(a, b, f.remote(1))) == 2
    arr = ray.put(np.ones((100, 100)))
    assert ray.get(f.remote(arr)).sum() == 20000
    ready, rest = ray.wait(refs, num_returns=5, timeout=10)
    assert len(ready) == 5 and len(rest) == 5
    try:
        ray.get(f.remote("x"), timeout=10)
    except ray.exceptions.GetTimeoutError:
        raise SystemExit("unexpected timeout")
    ray.shutdown()
    print("ray-script-ok")
    """
)


RAY_ACTOR_SCRIPT = textwrap.dedent(
    """
    import asyncio, os
    import rayr as ray

    ray.init(num_cpus=2, namespace="app")

    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

        def die(self):
            os._exit(1)

    @ray.remote
    class AsyncActor:
        async def run(self, x):
            await asyncio.sleep(0.01)
            return x * 3

    counter = Counter.options(name="global_counter", max_restarts=1).remote()
    assert ray.get([counter.increment.remote() for _ in range(3)]) == [1, 2, 3]
    same = ray.get_actor("global_counter")
    assert ray.get(same.increment.remote()) == 4
    counter.die.remote()
    assert ray.get(counter.increment.remote()) == 1   # restarted with fresh state
    a = AsyncActor.remote()
    assert ray.get([a.run.remote(i) for i in range(5)]) == [0, 3, 6, 9, 12]
    ray.kill(a)
    try:
        ray.get(a.run.remote(1))
        raise SystemExit("a killed actor answered")
    except ray.exceptions.RayActorError:
        pass
    ray.shutdown()
    print("ray-actor-script-ok")
    """
)


RAY_UTIL_SCRIPT = textwrap.dedent(
    """
    import time
    import rayr as ray

    ray.init(num_cpus=2)

    @ray.remote
    def numbers(n):
        for i in range(n):
            yield i

    @ray.remote
    def forever():
        time.sleep(60)

    @ray.remote
    class Doubler:
        def double(self, x):
            print("doubling", x)
            return 2 * x

    assert [ray.get(r) for r in numbers.remote(4)] == [0, 1, 2, 3]
    ref = forever.remote()
    time.sleep(0.3)
    ray.cancel(ref)
    try:
        ray.get(ref, timeout=20)
        raise SystemExit("a cancelled task returned")
    except ray.exceptions.TaskCancelledError:
        pass
    pool = ray.util.ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    q = ray.util.queue.Queue()
    q.put("item")
    assert q.get(timeout=5) == "item"
    with ray.util.multiprocessing.Pool(2) as mp:
        assert mp.map(abs, [-1, -2]) == [1, 2]
    time.sleep(0.3)
    ray.shutdown()
    print("ray-util-script-ok")
    """
)


def run_script(text: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``text`` as a user's script file; it must exit 0."""
    script = tmp_path / "app.py"
    script.write_text(text)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out


def test_unchanged_ray_core_script_runs(sessions, tmp_path):
    assert "ray-script-ok" in run_script(RAY_SCRIPT, sessions[1], tmp_path).stdout


def test_unchanged_ray_actor_script_runs(sessions, tmp_path):
    assert "ray-actor-script-ok" in run_script(RAY_ACTOR_SCRIPT, sessions[1], tmp_path).stdout


def test_unchanged_ray_util_script_runs(sessions, tmp_path):
    out = run_script(RAY_UTIL_SCRIPT, sessions[1], tmp_path)
    assert "ray-util-script-ok" in out.stdout
    assert "(Doubler pid=" in out.stdout and "doubling 3" in out.stdout


def test_demo_runs(sessions):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True,
                         text=True, env=sessions[1], timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for needle in ("square(12) = 144", "sum_of_squares(50) = 40425", "equal: True",
                   "read-only view: True", "column means match: True", "still running: 4",
                   "caught ZeroDivisionError"):
        assert needle in out.stdout, out.stdout
