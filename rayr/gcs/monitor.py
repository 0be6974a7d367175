"""The head monitor: declares nodes dead when their liveness key lapses.

All of its state lives in Redis, so it can be restarted at any time.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import redis

from rayr.config import Settings
from rayr.gcs.client import NODE_ALIVE, NODE_DEAD, GcsClient, connect
from rayr.keys import Keys

log = logging.getLogger("rayr.monitor")


class Monitor:
    """Watches node liveness; more duties (actors, placement, autoscaling) build on it."""

    def __init__(self, gcs: GcsClient, settings: Settings) -> None:
        self.gcs = gcs
        self.settings = settings
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def check_nodes(self) -> list[str]:
        """Mark ALIVE nodes whose liveness key expired as DEAD; returns their ids."""
        died = []
        for node in self.gcs.list_nodes():
            if node.get("state") != NODE_ALIVE:
                continue
            node_id = node["node_id"]
            if not self.gcs.r.exists(self.gcs.keys.node_alive(node_id)):
                self.gcs.set_node_state(
                    node_id,
                    NODE_DEAD,
                    f"no heartbeat for {self.settings.node_timeout_s}s",
                )
                log.warning("node %s declared dead: heartbeats stopped", node_id[:12])
                died.append(node_id)
        return died

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_nodes()
            except redis.RedisError:
                log.exception("node check failed; retrying")
            self._stop.wait(self.settings.heartbeat_interval_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rayr.gcs.monitor")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--settings-json", required=True)
    opts = parser.parse_args(argv)
    settings = Settings.model_validate_json(opts.settings_json)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    gcs = GcsClient(connect(opts.redis_url, settings.redis_password), Keys(settings.cluster_name))
    monitor = Monitor(gcs, settings)
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop())
    signal.signal(signal.SIGINT, lambda *_: monitor.stop())
    monitor.run()


if __name__ == "__main__":
    main()
