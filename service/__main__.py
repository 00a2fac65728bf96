"""`python -m service`: serve the app with waitress, one process, settings from the environment."""

from __future__ import annotations

import logging
import sys

from service.allocator import MallocRelease, allocator
from service.app import create_app
from service.config import ConfigError, Settings
from service.imaging import keep_image_memory
from service.sample import load_sample
from service.server import GracefulServer, build_server

log = logging.getLogger("flipfleet")


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    keep_image_memory(settings.pillow_blocks)
    # Make or read the sample now, so that a healthy replica answers its first request at speed.
    load_sample(settings.sample_path or None)
    app = create_app(settings)
    gate = app.extensions["flip_gate"]
    MallocRelease(lambda: (gate.admitted, gate.held)).start()
    server = GracefulServer(build_server(settings, app), settings.drain_seconds)
    log.info(
        "flipfleet replica %s (version %s) listening on http://%s:%s with %d threads (flips: %d at once, %d held; %s)",
        settings.replica,
        settings.version,
        settings.host,
        server.server.effective_port,
        settings.threads,
        settings.concurrency,
        settings.queue,
        allocator(),
    )
    cut = server.serve_until_stopped()
    log.info("flipfleet replica %s stopped (%d connection(s) cut by the drain deadline)", settings.replica, cut)
    return 0


if __name__ == "__main__":
    sys.exit(main())
