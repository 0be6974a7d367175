"""``python -m rayr.dashboard``: serve the dashboard on the sockets the head bound for it.

Until the first request arrives the process only waits on its sockets: the web framework,
the server and the Prometheus client load then, so a dashboard nobody opens costs a sleeping
process (forked from an embedded cluster's driver, a few MiB of its own) and no CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from rayr.config import daemon_settings
from rayr.gcs.client import GcsClient, connect_as
from rayr.keys import Keys

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("rayr.dashboard")


class ByPort:
    """Route a request by the port it came in on: the metrics port serves /metrics only."""

    def __init__(self, main: ASGIApp, metrics: ASGIApp, metrics_port: int | None) -> None:
        self.main, self.metrics, self.metrics_port = main, metrics, metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") or (None, None)
        app = self.metrics if self.metrics_port is not None and server[1] == self.metrics_port else self.main
        await app(scope, receive, send)


def _exit(signum: int, frame: Any) -> None:
    sys.exit(0)


def _serve(gcs: GcsClient, token: str | None, info: dict[str, Any], sockets: list[socket.socket],
           metrics_port: int | None) -> None:
    import uvicorn

    from rayr.dashboard.app import build_app, metrics_only_app

    app = ByPort(build_app(gcs, token, info), metrics_only_app(gcs, token), metrics_port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rayr.dashboard")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--settings-json", required=True)
    parser.add_argument("--fd", type=int, help="the listening socket of the pages, /api/ and /metrics")
    parser.add_argument("--url", default="", help="the address the pages are opened at")
    parser.add_argument("--metrics-fd", type=int, help="a second socket that serves /metrics only")
    parser.add_argument("--metrics-url", default="")
    opts = parser.parse_args(argv)
    settings = daemon_settings(opts.settings_json)
    gcs = GcsClient(connect_as(opts.redis_url, settings), Keys(settings.cluster_name))
    token = settings.dashboard_token
    sockets = [socket.socket(fileno=opts.fd)] if opts.fd is not None else []
    metrics_port = None
    if opts.metrics_fd is not None:
        sockets.append(socket.socket(fileno=opts.metrics_fd))
        metrics_port = sockets[-1].getsockname()[1]
    info: dict[str, Any] = {"cluster": settings.cluster_name, "url": opts.url,
                            "metrics_url": opts.metrics_url or (opts.url + "/metrics")}
    # uvicorn stops on SIGTERM, then raises it again for the handler it found: ours ends the
    # process through the cleanup below instead of dying at once
    signal.signal(signal.SIGTERM, _exit)
    gcs.r.hset(gcs.keys.dashboard,
               mapping={**info, "pid": str(os.getpid()), "auth": "token" if token else "none"})
    try:
        select.select(sockets, [], [])  # the first connection waits in the backlog meanwhile
        _serve(gcs, token, info, sockets, metrics_port)
    finally:
        try:  # a stopped dashboard is not advertised
            gcs.r.delete(gcs.keys.dashboard)
        except Exception:
            pass


if __name__ == "__main__":
    main()
