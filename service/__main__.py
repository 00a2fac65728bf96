"""`python -m service`: serve the app with waitress, one process, settings from the environment."""

from __future__ import annotations

import logging
import signal
import sys

import waitress

from service.app import create_app
from service.config import ConfigError, Settings
from service.imaging import keep_image_memory
from service.sample import load_sample

log = logging.getLogger("flipfleet")
IO_CHUNK = 256 * 1024


def build_server(settings: Settings, app=None):
    """A waitress server for `app`, tuned for a few large uploads rather than many small ones."""
    return waitress.create_server(
        app or create_app(),
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        # Twice the app's limit: the app answers 413 as JSON up to there, waitress beyond.
        max_request_body_size=2 * settings.max_bytes,
        ident="flipfleet",
        # Keep a body within the limit in memory rather than a temp file, and move it in
        # 256 KiB steps rather than 8 KiB ones: together ~10 % of a flip's time (loadtest.overhead).
        inbuf_overflow=settings.max_bytes,
        outbuf_overflow=settings.max_bytes,
        recv_bytes=IO_CHUNK,
        send_bytes=IO_CHUNK,
    )


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
    server = build_server(settings)
    # docker stop sends SIGINT (STOPSIGNAL); plain SIGTERM should close just as cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info(
        "flipfleet replica %s listening on http://%s:%s with %d threads",
        settings.replica,
        settings.host,
        server.effective_port,
        settings.threads,
    )
    server.run()
    log.info("flipfleet replica %s stopped", settings.replica)
    return 0


if __name__ == "__main__":
    sys.exit(main())
