"""The dashboard's web application (Starlette): the pages, ``/api/`` and ``/metrics``.

Endpoints are plain functions (Starlette runs them in its thread pool), each reading Redis
through one ``GcsClient``. Beyond loopback every request needs the dashboard token: an
``Authorization: Bearer <token>`` header, or once ``?token=<token>`` in a browser, which
then keeps it in an HTTP-only cookie.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

import rayr
from rayr.dashboard import data
from rayr.dashboard.data import TaskRow
from rayr.dashboard.metrics import ClusterCollector
from rayr.gcs.client import GcsClient
from rayr.gcs.logs import LogError

STATIC = Path(__file__).parent / "static"
COOKIE = "rayr_dashboard_token"
UNAUTHORIZED = ("this dashboard requires its token: open it with ?token=<token> or send 'Authorization: "
                "Bearer <token>' (rayr start --head printed it; it is in the session's dashboard_token file)")
TASKS_TTL_S = 1.0  # pages poll every ~2 s; several panels share one read of the task events


class TaskCache:
    """The task events, read at most once per ``ttl`` however many requests want them."""

    def __init__(self, gcs: GcsClient, ttl: float = TASKS_TTL_S) -> None:
        self.gcs, self.ttl = gcs, ttl
        self._lock = threading.Lock()
        self._tasks: list[TaskRow] = []
        self._at = -1e9

    def __call__(self) -> list[TaskRow]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._tasks = data.all_tasks(self.gcs)
                self._at = time.monotonic()
            return self._tasks


class TokenAuth:
    """ASGI middleware: 401 for any request without the token (when one is set)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    def _ok(self, given: str | None) -> bool:
        return given is not None and self.token is not None and secrets.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        query = request.query_params.get("token")
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
        elif self._ok(query):
            # the link with the token was opened once: keep it in a cookie, drop it from the URL
            redirect = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            redirect.set_cookie(COOKIE, query or "", httponly=True, samesite="strict")
            await redirect(scope, receive, send)
        else:
            response = JSONResponse({"error": UNAUTHORIZED}, status_code=401)
            await response(scope, receive, send)


def _json(fn: Callable[[Request], Any]) -> Callable[[Request], Response]:
    """A JSON endpoint; a bad request or an unreachable node answers with a message."""

    def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(fn(request))
        except (ValueError, KeyError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except LogError as err:
            return JSONResponse({"error": str(err)}, status_code=404)
        except redis.RedisError as err:
            return JSONResponse({"error": f"the cluster's Redis did not answer: {err}"}, status_code=503)

    return endpoint


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"query parameter {name!r} must be an integer; got {raw!r}") from None


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise ValueError(f"query parameter {name!r} is required")
    return value


def build_app(gcs: GcsClient, token: str | None, info: dict[str, Any]) -> Starlette:
    """The application over the cluster ``gcs`` reaches; ``info`` is what /api/version says."""
    tasks = TaskCache(gcs)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(gcs, tasks))
    q = lambda request, name: request.query_params.get(name, "")  # noqa: E731

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    api = {
        "/api/version": lambda r: {"rayr": rayr.__version__, **info},
        "/api/overview": lambda r: data.overview(gcs, tasks()),
        "/api/nodes": lambda r: data.nodes(gcs),
        "/api/jobs": lambda r: data.jobs(gcs),
        "/api/jobs/{submission_id}/logs": lambda r: data.job_logs(gcs, r.path_params["submission_id"],
                                                                   q(r, "after") or "0"),
        "/api/actors": lambda r: data.actors(gcs),
        "/api/tasks": lambda r: data.task_table(tasks(), q(r, "job"), q(r, "state"), q(r, "name"),
                                                _int(r, "limit", data.TASK_ROWS)),
        "/api/timeline": lambda r: data.timeline(tasks(), 1000 * (time.time() - _int(r, "window_s", 60))),
        "/api/objects": lambda r: data.objects(gcs),
        "/api/placement_groups": lambda r: data.placement_groups(gcs),
        "/api/logs": lambda r: data.log_files(gcs, _required(r, "node")),
        "/api/logs/read": lambda r: data.read_log(gcs, _required(r, "node"), _required(r, "name"),
                                                  _int(r, "offset", -64 * 1024)),
    }
    routes = [Route("/", index), Route("/metrics", metrics),
              *(Route(path, _json(fn)) for path, fn in api.items()),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, middleware=[Middleware(TokenAuth, token=token)])


def metrics_only_app(gcs: GcsClient, token: str | None) -> Starlette:
    """What ``--metrics-export-port`` serves: ``/metrics`` alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(gcs, TaskCache(gcs)))

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics)], middleware=[Middleware(TokenAuth, token=token)])
