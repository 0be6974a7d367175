"""Workers of the default env are forked from the raylet's zygote, and behave like any other."""

from __future__ import annotations

import os
import signal

import psutil

import rayr


@rayr.remote
def parent_name():
    return psutil.Process().name(), psutil.Process(os.getppid()).name()


@rayr.remote(max_retries=1)
def dies_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


def test_workers_are_forked_from_the_zygote(ray):
    assert rayr.get(parent_name.remote()) == ("rayr-worker", "rayr-zygote")


def test_a_forked_worker_killed_mid_task_is_replaced_and_the_task_retried(ray, tmp_path):
    assert rayr.get(dies_once.remote(str(tmp_path / "died")), timeout=60) == "second try"
