"""runtime_env checking, merging, packing and the per-env scheduling rules, without Redis."""

from __future__ import annotations

import io
import zipfile

import pytest

from rayr import resources as res
from rayr.job_submission.supervisor import entrypoint_command
from rayr.raylet.scheduler import QueuedTask, Scheduler
from rayr.remote_function import validate_task_options
from rayr.runtime_env import RuntimeEnv, merge, packaging, validate


def test_unknown_field_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="'condaa'.*Valid fields: env_vars, working_dir, py_modules, pip"):
        validate({"condaa": "env.yaml"})
    with pytest.raises(ValueError, match="'conda' is not supported: .*pip"):  # Ray's, with the reason
        validate({"conda": "env.yaml"})
    with pytest.raises(ValueError, match="'workdir'"):
        validate_task_options({"runtime_env": {"workdir": "."}})
    with pytest.raises(ValueError, match="'colour'"):
        RuntimeEnv(colour="blue")


@pytest.mark.parametrize("env, words", [
    ({"env_vars": {"A": 1}}, "'env_vars' must be a dict of str -> str"),
    ({"pip": [""]}, "'pip' must be a list of requirement strings"),
    ({"pip": "/no/such/requirements.txt"}, "requirements file /no/such/requirements.txt does not exist"),
    ({"config": {"setup_timeout_seconds": 0}}, "setup_timeout_seconds"),
    ({"config": {"eager": True}}, "'eager'"),
    ({"py_modules": "mod"}, "'py_modules' must be a list"),
    ({"excludes": "*.log"}, "'excludes' must be a list"),
])
def test_bad_values_say_what_is_expected(env, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        validate(env)


def test_requirements_file_is_read(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntermcolor==2.4.0\n\nsix\n")
    assert validate({"pip": str(req)}) == {"pip": {"packages": ["termcolor==2.4.0", "six"]}}
    assert validate({"pip": {"packages": ["a"]}}) == {"pip": {"packages": ["a"]}}


def test_task_fields_override_job_fields_and_env_vars_merge_key_by_key():
    job = {"env_vars": {"A": "job", "B": "job"}, "working_dir": "pkg://job", "pip": {"packages": ["x"]},
           "config": {"setup_timeout_seconds": 10, "eager_install": False}}
    task = {"env_vars": {"B": "task", "C": "task"}, "working_dir": "pkg://task",
            "config": {"setup_timeout_seconds": 20}}
    merged = merge(job, task)
    assert merged["env_vars"] == {"A": "job", "B": "task", "C": "task"}
    assert merged["working_dir"] == "pkg://task"
    assert merged["pip"] == {"packages": ["x"]}  # not named by the task: inherited
    assert merged["config"] == {"setup_timeout_seconds": 20, "eager_install": False}
    assert merge(job, None) == job and merge(None, task) == task
    assert merge({}, {}) == {}


def _tree(tmp_path):
    root = tmp_path / "app"
    (root / "data").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "__pycache__").mkdir()
    (root / "main.py").write_text("print('hi')")
    (root / "run.log").write_text("log")
    (root / "data" / "big.bin").write_bytes(b"\0" * 1000)
    (root / "top.txt").write_text("top")
    (root / "sub" / "top.txt").write_text("nested")
    (root / "sub" / "x.tmp").write_text("tmp")
    (root / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"pyc")
    return root


def test_excludes_follow_gitignore_rules(tmp_path):
    root = _tree(tmp_path)
    names = [n for n, _, _ in packaging.collect(str(root), keep_name=False,
                                                excludes=["*.log", "data/", "/top.txt", "sub/*.tmp"])]
    assert names == ["main.py", "sub/top.txt"]  # /top.txt only at the root; __pycache__ always
    as_module = [n for n, _, _ in packaging.collect(str(root), keep_name=True, excludes=["data"])]
    assert "app/main.py" in as_module and not any("data" in n for n in as_module)


def test_excludes_take_negations_and_double_stars(tmp_path):
    root = _tree(tmp_path)
    (root / "sub" / "deep").mkdir()
    (root / "sub" / "deep" / "keep.log").write_text("kept")
    (root / "sub" / "deep" / "drop.log").write_text("dropped")
    names = [n for n, _, _ in packaging.collect(str(root), keep_name=False,
                                                excludes=["*.log", "!keep.log", "**/x.tmp", "data"])]
    assert sorted(names) == ["main.py", "sub/deep/keep.log", "sub/top.txt", "top.txt"]


def test_gitignore_files_in_the_directory_are_honoured(tmp_path):
    """Each .gitignore applies below its own directory, beside `excludes`, as in Ray."""
    root = _tree(tmp_path)
    (root / ".gitignore").write_text("# build outputs\n*.log\ndata/\n")
    (root / "sub" / ".gitignore").write_text("/top.txt\n")  # sub/top.txt, not the root's top.txt
    (root / "other").mkdir()
    (root / "other" / "x.tmp").write_text("not under sub/")
    names = [n for n, _, _ in packaging.collect(str(root), keep_name=False, excludes=["sub/*.tmp"])]
    assert sorted(names) == [".gitignore", "main.py", "other/x.tmp", "sub/.gitignore", "top.txt"]
    # py_modules: the same rules, relative to the module's directory
    as_module = [n for n, _, _ in packaging.collect(str(root), keep_name=True, excludes=[])]
    assert "app/main.py" in as_module and "app/run.log" not in as_module
    assert not any(n.startswith("app/data/") for n in as_module)


def test_package_hash_follows_content_not_timestamps(tmp_path):
    root = _tree(tmp_path)
    files = packaging.collect(str(root), keep_name=False, excludes=[])
    first = packaging.content_hash(files)
    (root / "main.py").touch()
    again = packaging.collect(str(root), keep_name=False, excludes=[])
    assert packaging.content_hash(again) == first
    assert packaging.build_zip(again) == packaging.build_zip(files)  # fixed timestamps
    (root / "main.py").write_text("print('changed')")
    assert packaging.content_hash(packaging.collect(str(root), keep_name=False, excludes=[])) != first
    with zipfile.ZipFile(io.BytesIO(packaging.build_zip(files))) as zf:
        assert zf.read("main.py") == b"print('hi')"


def test_a_zip_with_one_top_directory_is_unwrapped(tmp_path):
    path = tmp_path / "app.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("app/main.py", "x = 1")
        zf.writestr("app/pkg/__init__.py", "")
    assert sorted(n for n, _, _ in packaging.collect(str(path), keep_name=False, excludes=[])) == [
        "main.py", "pkg/__init__.py"]


class FakeRedis:
    """Only what packaging.upload uses (a pure unit test)."""

    def __init__(self):
        self.data = {}

    def exists(self, key):
        return key in self.data

    def set(self, key, value, nx=False):
        if not (nx and key in self.data):
            self.data[key] = value


def test_upload_once_and_refuse_past_the_size_limit(tmp_path):
    from rayr.keys import Keys

    root = _tree(tmp_path)
    r, keys = FakeRedis(), Keys("unit")
    uri = packaging.upload(r, keys, str(root), keep_name=False, excludes=[], limit=1 << 20)
    assert uri.startswith("pkg://") and len(r.data) == 1
    assert packaging.upload(r, keys, str(root), keep_name=False, excludes=[], limit=1 << 20) == uri
    (root / "huge.bin").write_bytes(__import__("os").urandom(50_000))
    too_big = r"'working_dir': .*app packs to \d+ bytes, more than the limit of 10000"
    with pytest.raises(ValueError, match=too_big):
        packaging.upload(r, keys, str(root), keep_name=False, excludes=[], limit=10_000)
    with pytest.raises(ValueError, match=r"'working_dir': the path .*missing does not exist"):
        packaging.upload(r, keys, str(tmp_path / "missing"), keep_name=False, excludes=[], limit=1 << 20)
    env = {"working_dir": str(root), "excludes": ["huge.bin"], "env_vars": {"A": "1"}}
    resolved = packaging.resolve(env, r, keys, 1 << 20)
    assert resolved == {"working_dir": uri, "env_vars": {"A": "1"}}  # same content as before
    assert packaging.env_hash(resolved) == packaging.env_hash(dict(reversed(resolved.items())))
    assert packaging.env_hash({}) == ""


def test_env_shapes_keep_their_resources():
    shape = "CPU=1" + res.ENV_MARK + "abc123"
    assert res.parse_shape(shape) == {"CPU": 1.0}
    assert res.parse_shape(res.TARGET_MARK + res.ACTOR_SHAPE_MARK + shape) == {"CPU": 1.0}
    assert res.env_of(shape) == "abc123" and res.env_of("CPU=1") == ""


def _task(n: int, env: str = "") -> QueuedTask:
    shape = "CPU=1" + (res.ENV_MARK + env if env else "")
    return QueuedTask("s", str(n).encode(), b"spec", shape, {"CPU": 1.0}, env=env)


def test_tasks_only_go_to_workers_of_their_env():
    s = Scheduler(total={"CPU": 2.0}, max_workers=8, min_pool=1)
    s.on_worker_ready("plain")
    s.on_tasks([_task(1, "e1")])
    assert s.dispatches() == []  # the idle default worker must not take it
    plan, retire = s.plan_workers()
    assert plan == {"e1": 1} and retire == []
    s.on_worker_started("e1")
    assert s.plan_workers() == ({}, [])  # one is on its way
    s.on_worker_ready("w-e1", "e1")
    s.on_tasks([_task(2)])
    pairs = {d.worker: d.task.entry_id for d in s.dispatches()}
    assert pairs == {"w-e1": b"1", "plain": b"2"}


def test_spare_idle_workers_of_other_envs_make_room():
    s = Scheduler(total={"CPU": 4.0}, max_workers=2, min_pool=1)
    s.on_worker_ready("a", "e1")
    s.on_worker_ready("b", "e2")
    s.on_tasks([_task(1, "e3")])
    plan, retire = s.plan_workers()
    assert plan == {"e3": 1} and len(retire) == 1 and retire[0] in ("a", "b")
    assert retire[0] not in s.idle and retire[0] not in s.live
    s.on_tasks([_task(2, "e1" if retire[0] == "b" else "e2")])
    s.on_worker_started("e3")
    assert s.plan_workers() == ({}, [])  # the remaining idle worker is needed by its task


def test_failed_env_tasks_leave_the_queue_and_free_resources():
    s = Scheduler(total={"CPU": 1.0}, max_workers=4)
    s.on_tasks([_task(1, "bad"), _task(2, "bad"), _task(3)])
    assert s.available["CPU"] == 0.0 and len(s.overflow) == 2
    taken = s.take_env_tasks("bad")
    assert [t.entry_id for t in taken] == [b"1", b"2"]
    assert [t.entry_id for t in s.ready] == [b"3"] and s.available["CPU"] == 0.0


def test_plain_entrypoints_run_without_a_shell():
    assert entrypoint_command("python main.py --n 3") == ["python", "main.py", "--n", "3"]
    assert entrypoint_command("python a.py && echo done") == ["/bin/sh", "-c", "python a.py && echo done"]
    assert entrypoint_command("FOO=1 python a.py")[0] == "/bin/sh"
