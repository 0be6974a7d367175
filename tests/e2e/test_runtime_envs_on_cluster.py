"""Runtime envs on real raylets and workers: each field, isolation, pip with its cache,
setup failures, inheritance and merging."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import rayr
from rayr.exceptions import RuntimeEnvSetupError
from rayr.runtime_env.installer import READY
from rayr.testing import Cluster

PIP_PACKAGE = "termcolor==2.4.0"  # tiny, pure Python, no dependencies


@pytest.fixture(scope="module")
def env_cluster(redis_url):
    c = Cluster(redis_url)
    c.add_node(num_cpus=2)
    rayr.init(address=redis_url, _cluster_name=c.name)
    yield c
    rayr.shutdown()
    c.shutdown()


@rayr.remote
def probe(name="FOO"):
    return os.getpid(), os.environ.get(name), os.getcwd()


def test_env_vars_are_set_and_do_not_leak(env_cluster):
    pid_env, value, _ = rayr.get(probe.options(runtime_env={"env_vars": {"FOO": "bar"}}).remote())
    assert value == "bar"
    pid_plain, plain, _ = rayr.get(probe.remote())
    assert plain is None and pid_plain != pid_env  # never the same worker process
    other_pid, other, _ = rayr.get(probe.options(runtime_env={"env_vars": {"FOO": "baz"}}).remote())
    assert other == "baz" and other_pid not in (pid_env, pid_plain)
    # the same env again reuses its worker
    again = rayr.get(probe.options(runtime_env={"env_vars": {"FOO": "bar"}}).remote())
    assert again[:2] == (pid_env, "bar")


def test_working_dir_is_cwd_and_importable_with_excludes(env_cluster, tmp_path):
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "helper_mod_wd.py").write_text("VALUE = 41\n")
    (app / "notes.log").write_text("skip me")
    (app / "data" / "blob.bin").write_bytes(b"x" * 100)
    (app / "keep.txt").write_text("kept")

    @rayr.remote
    def inside():
        import helper_mod_wd

        files = sorted(os.listdir("."))
        return helper_mod_wd.VALUE + 1, files, open("keep.txt").read(), os.getcwd()

    env = {"working_dir": str(app), "excludes": ["*.log", "data/"]}
    value, files, kept, cwd = rayr.get(inside.options(runtime_env=env).remote())
    assert value == 42 and kept == "kept"
    assert files == ["helper_mod_wd.py", "keep.txt"]
    assert cwd.startswith(env_cluster.session_dir)  # unpacked once on the node, not the source


def test_py_modules_are_importable(env_cluster, tmp_path):
    pkg = tmp_path / "mypkg_rt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import hello\n")
    (pkg / "core.py").write_text("def hello():\n    return 'hello from mypkg'\n")
    single = tmp_path / "single_mod_rt.py"
    single.write_text("X = 7\n")

    @rayr.remote
    def use():
        import mypkg_rt
        import single_mod_rt

        return mypkg_rt.hello(), single_mod_rt.X

    env = {"py_modules": [str(pkg), str(single)]}
    assert rayr.get(use.options(runtime_env=env).remote()) == ("hello from mypkg", 7)


@rayr.remote
def colored_text():
    import sys

    import termcolor

    return termcolor.colored("ok", "red", force_color=True), sys.prefix, os.environ.get("TAG")


def test_pip_installs_into_a_cached_virtualenv(env_cluster):
    text, prefix, _ = rayr.get(colored_text.options(runtime_env={"pip": [PIP_PACKAGE]}).remote(), timeout=110)
    assert "ok" in text and text != "ok"  # colored: ANSI codes around it
    assert prefix.startswith(os.path.join(env_cluster.settings.temp_dir, "runtime_envs"))
    marker = os.path.join(prefix, READY)
    made = os.stat(marker).st_mtime_ns
    # another env (other env_vars) with the same requirements: a new worker, the same venv
    env = {"pip": [PIP_PACKAGE], "env_vars": {"TAG": "second"}}
    text2, prefix2, tag = rayr.get(colored_text.options(runtime_env=env).remote(), timeout=60)
    assert (prefix2, tag) == (prefix, "second")
    assert os.stat(marker).st_mtime_ns == made  # reused, not rebuilt
    with pytest.raises(ModuleNotFoundError):
        rayr.get(colored_text.remote())  # the default workers never see it


def test_failed_pip_install_fails_only_its_tasks(env_cluster):
    bad = colored_text.options(runtime_env={"pip": ["termcolor==0.0.0.0.999"]}).remote()
    good = probe.options(runtime_env={"env_vars": {"FOO": "fine"}}).remote()
    assert rayr.get(good, timeout=60)[1] == "fine"
    pip_says = "No matching distribution found for termcolor==0.0.0.0.999"
    with pytest.raises(RuntimeEnvSetupError, match=pip_says):
        rayr.get(bad, timeout=110)
    assert rayr.get(probe.remote())[1] is None  # the node goes on serving


def test_actors_and_nested_tasks_inherit_the_env(env_cluster):
    @rayr.remote
    class Reader:
        def read(self, name):
            return os.environ.get(name)

        def env(self):
            return rayr.get_runtime_context().runtime_env

    actor = Reader.options(runtime_env={"env_vars": {"ACTOR_VAR": "a1"}}).remote()
    assert rayr.get(actor.read.remote("ACTOR_VAR")) == "a1"
    assert rayr.get(actor.env.remote()) == {"env_vars": {"ACTOR_VAR": "a1"}}

    @rayr.remote
    def parent():
        inherited = rayr.get(probe.remote("PARENT_VAR"))[1]  # no env of its own: the parent's
        own = probe.options(runtime_env={"env_vars": {"OTHER": "o"}})
        merged = rayr.get(own.remote("PARENT_VAR"))[1]
        return inherited, merged

    env = {"env_vars": {"PARENT_VAR": "p"}}
    assert rayr.get(parent.options(runtime_env=env).remote(), timeout=60) == ("p", "p")


def test_bad_envs_are_refused_before_submission(env_cluster, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=f"'working_dir': the path {missing} does not exist"):
        probe.options(runtime_env={"working_dir": missing}).remote()
    with pytest.raises(ValueError, match="Unknown runtime_env field.*'imag_uri'"):
        probe.options(runtime_env={"imag_uri": "x"})


JOB_ENV_DRIVER = """
import os, sys, rayr
rayr.init(address=sys.argv[1], _cluster_name=sys.argv[2],
          runtime_env={"env_vars": {"JOB_A": "job", "SHARED": "job"}})

@rayr.remote
def read():
    return os.environ.get("JOB_A"), os.environ.get("SHARED"), os.environ.get("TASK_B")

print(rayr.get(read.remote()))
print(rayr.get(read.options(runtime_env={"env_vars": {"SHARED": "task", "TASK_B": "b"}}).remote()))
rayr.shutdown()
"""


def test_job_level_env_merges_with_task_env(env_cluster, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(JOB_ENV_DRIVER))
    out = subprocess.run([sys.executable, str(script), env_cluster.address, env_cluster.name],
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2:] == ["('job', 'job', None)", "('job', 'task', 'b')"]


def _mark_process_hooked():
    import builtins

    builtins._rayr_test_hooked = os.getpid()  # what the worker's tasks see


@rayr.remote
def hooked_pid():
    import builtins

    return os.getpid(), getattr(builtins, "_rayr_test_hooked", None)


def test_worker_process_setup_hook_runs_once_per_worker_before_its_tasks(env_cluster, tmp_path):
    env = {"worker_process_setup_hook": _mark_process_hooked}
    results = rayr.get([hooked_pid.options(runtime_env=env).remote() for _ in range(4)])
    assert all(pid == hooked for pid, hooked in results)  # the hook ran in that very process
    assert rayr.get(hooked_pid.remote())[1] is None  # default workers never ran it
    # a module.function name, from a module the env ships
    (tmp_path / "hook_mod_rt.py").write_text(
        "import builtins, os\ndef setup():\n    builtins._rayr_test_hooked = -os.getpid()\n")
    named = {"worker_process_setup_hook": "hook_mod_rt.setup",
             "py_modules": [str(tmp_path / "hook_mod_rt.py")]}
    pid, hooked = rayr.get(hooked_pid.options(runtime_env=named).remote())
    assert hooked == -pid


def _failing_hook():
    raise RuntimeError("the setup hook broke")


def test_a_failing_setup_hook_fails_the_envs_tasks_with_its_error(env_cluster):
    env = {"worker_process_setup_hook": _failing_hook}
    with pytest.raises(RuntimeEnvSetupError, match="the setup hook broke"):
        rayr.get(hooked_pid.options(runtime_env=env).remote(), timeout=120)
    assert rayr.get(hooked_pid.remote(), timeout=60)[1] is None  # other work goes on


def test_fields_rayr_cannot_run_are_refused_saying_why(env_cluster):
    for field_name, why in (("container", "containers"), ("nsight", "Nsight"), ("conda", "pip")):
        with pytest.raises(ValueError, match=f"'{field_name}' is not supported: .*{why}"):
            probe.options(runtime_env={field_name: {}}).remote()
    with pytest.raises(ValueError, match="worker_process_setup_hook"):
        probe.options(runtime_env={"worker_process_setup_hook": 3}).remote()
