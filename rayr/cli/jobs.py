"""``rayr job submit|status|logs|stop|list`` and ``rayr list jobs``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import yaml

from rayr.cli.common import address_option, password_option, stamp, table
from rayr.job_submission import JobStatus, JobSubmissionClient


def _client(address: str | None, redis_password: str | None) -> JobSubmissionClient:
    try:
        return JobSubmissionClient(address, redis_password=redis_password)
    except (ConnectionError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def _runtime_env(
    working_dir: str | None, env_json: str | None, env_file: str | None
) -> dict[str, Any] | None:
    env: dict[str, Any] = {}
    if env_file:
        with open(env_file) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise click.BadParameter("must hold a mapping of runtime_env fields", param_hint="--runtime-env")
        env.update(loaded)
    if env_json:
        try:
            loaded = json.loads(env_json)
        except ValueError as err:
            raise click.BadParameter(f"not JSON: {err}", param_hint="--runtime-env-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--runtime-env-json")
        env.update(loaded)
    if working_dir:
        env["working_dir"] = working_dir
    return env or None


def _follow(client: JobSubmissionClient, sid: str) -> None:
    try:
        for chunk in client.follow_job_logs(sid):
            click.echo(chunk, nl=False)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following the logs; job '{sid}' goes on (`rayr job stop {sid}` stops it).")
        sys.exit(130)


def _final(client: JobSubmissionClient, sid: str) -> None:
    info = client.get_job_info(sid)
    word = {JobStatus.SUCCEEDED: "succeeded", JobStatus.FAILED: "failed", JobStatus.STOPPED: "was stopped"}
    click.echo(f"Job '{sid}' {word.get(info.status, str(info.status))}")
    if info.status != JobStatus.SUCCEEDED:
        click.echo(info.message, err=True)
        sys.exit(1)


@click.group()
def job() -> None:
    """Submit jobs (drivers run on the head node) and watch them."""


@job.command(context_settings={"ignore_unknown_options": True})
@address_option
@password_option
@click.option("--working-dir", help="Local directory (or .zip) shipped to the cluster; the job runs in it.")
@click.option("--runtime-env-json", help='The job\'s runtime_env as JSON, e.g. \'{"pip": ["termcolor"]}\'.')
@click.option("--runtime-env", "runtime_env_file", type=click.Path(exists=True, dir_okay=False),
              help="A YAML or JSON file holding the job's runtime_env.")
@click.option("--submission-id", help="The job's id (default: generated).")
@click.option("--metadata-json", help="Metadata to attach, as a JSON object of strings.")
@click.option("--no-wait", is_flag=True, help="Return once submitted instead of following the logs.")
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(
    address: str | None,
    redis_password: str | None,
    working_dir: str | None,
    runtime_env_json: str | None,
    runtime_env_file: str | None,
    submission_id: str | None,
    metadata_json: str | None,
    no_wait: bool,
    entrypoint: tuple[str, ...],
) -> None:
    """Run ENTRYPOINT (after ``--``) as a job: ``rayr job submit --working-dir . -- python main.py``."""
    import shlex

    env = _runtime_env(working_dir, runtime_env_json, runtime_env_file)
    metadata = json.loads(metadata_json) if metadata_json else None
    # one argument is a shell command as typed; several are quoted back into one
    command = entrypoint[0] if len(entrypoint) == 1 else shlex.join(entrypoint)
    client = _client(address, redis_password)
    try:
        sid = client.submit_job(entrypoint=command, runtime_env=env, submission_id=submission_id,
                                metadata=metadata)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Job '{sid}' submitted successfully")
    if no_wait:
        click.echo(f"  Status: rayr job status {sid}\n  Logs:   rayr job logs {sid} --follow\n"
                   f"  Stop:   rayr job stop {sid}")
        return
    _follow(client, sid)
    _final(client, sid)


@job.command()
@address_option
@password_option
@click.argument("submission_id")
def status(address: str | None, redis_password: str | None, submission_id: str) -> None:
    """Show a job's state and the message that goes with it."""
    client = _client(address, redis_password)
    try:
        info = client.get_job_info(submission_id)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Status for job '{submission_id}': {info.status}")
    click.echo(f"Status message: {info.message}")
    if info.driver_exit_code is not None:
        click.echo(f"Driver exit code: {info.driver_exit_code}")


@job.command()
@address_option
@password_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@click.argument("submission_id")
def logs(address: str | None, redis_password: str | None, follow: bool, submission_id: str) -> None:
    """Print what a job's driver printed (also after it ended)."""
    client = _client(address, redis_password)
    try:
        if follow:
            _follow(client, submission_id)
        else:
            click.echo(client.get_job_logs(submission_id), nl=False)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


@job.command()
@address_option
@password_option
@click.option("--no-wait", is_flag=True, help="Do not wait for the job to end.")
@click.argument("submission_id")
def stop(address: str | None, redis_password: str | None, no_wait: bool, submission_id: str) -> None:
    """Stop a running job (SIGTERM to its processes, SIGKILL 3 s later)."""
    client = _client(address, redis_password)
    try:
        if not client.stop_job(submission_id):
            done = client.get_job_status(submission_id)
            click.echo(f"Job '{submission_id}' has already finished ({done}); there is nothing to stop.")
            return
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Stopping job '{submission_id}'")
    if not no_wait:
        final = client.wait_until_finish(submission_id, timeout_s=30)
        click.echo(f"Job '{submission_id}' is {final}")


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    return table(rows, columns, lambda value: str(value or "-"))


@job.command("list")
@address_option
@password_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_submitted(address: str | None, redis_password: str | None, fmt: str) -> None:
    """List submitted jobs."""
    client = _client(address, redis_password)
    jobs = client.list_jobs()
    if fmt == "json":
        click.echo(json.dumps([{**vars(j), "status": j.status.value} for j in jobs], indent=2))
        return
    rows = [{"submission_id": j.submission_id, "status": j.status.value, "job_id": j.job_id,
             "start": stamp((j.start_time or 0) / 1000), "entrypoint": j.entrypoint} for j in jobs]
    click.echo(_table(rows, [("submission_id", "SUBMISSION_ID"), ("status", "STATUS"), ("job_id", "JOB_ID"),
                             ("start", "START"), ("entrypoint", "ENTRYPOINT")]))
