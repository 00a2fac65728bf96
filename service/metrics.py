"""Prometheus metrics of one replica, served at GET /metrics (one process per container, so no
multiprocess mode). Labels are few and bounded: a route, a method, a status, a span or a
reason; never a request id or a client address. docs/metrics.md lists every metric."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from werkzeug.wsgi import ClosingIterator

# 10 ms to 30 s: a small picture to a queue of large ones.
SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# 1 KiB to 64 MiB, by fours.
BYTES = tuple(1024 * 4**power for power in range(9))
# Where a flip's time goes, in order: waiting for its turn, reading the body out of waitress,
# decoding, flipping, encoding, and handing the answer to waitress.
SPANS = ("queue", "read", "decode", "flip", "encode", "write")
# No *_created series beside every counter and histogram: they double what Prometheus stores.
disable_created_metrics()


class Metrics:
    """The replica's metrics, in a registry of their own (so tests can make as many as they like)."""

    def __init__(self, version: str, queue: int):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("flipfleet_requests", "Requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.in_flight = Gauge("flipfleet_requests_in_flight", "Requests being served now, by route.",
                               ["route"], registry=r)
        self.duration = Histogram("flipfleet_request_duration_seconds",
                                  "Time in the replica, from the app's start to the last byte handed to waitress.",
                                  ["route"], buckets=SECONDS, registry=r)
        self.spans = Histogram("flipfleet_flip_span_seconds", "Where the time of each successful POST /flip went.",
                               ["span"], buckets=SECONDS, registry=r)
        self.bytes_in = Histogram("flipfleet_flip_request_bytes", "Size of the pictures received.",
                                  buckets=BYTES, registry=r)
        self.bytes_out = Histogram("flipfleet_flip_response_bytes", "Size of the flipped pictures sent.",
                                   buckets=BYTES, registry=r)
        self.pixels = Counter("flipfleet_flipped_pixels", "Pixels flipped (all frames).", registry=r)
        self.frames = Counter("flipfleet_flipped_frames", "Frames flipped.", registry=r)
        self.refusals = Counter("flipfleet_refusals", "Requests refused, by status and reason.",
                                ["status", "reason"], registry=r)
        self.held = Gauge("flipfleet_flips_held", "Flips held now, running or waiting for their turn.", registry=r)
        Gauge("flipfleet_flips_held_limit", "The most flips this replica holds (FLIP_QUEUE).",
              registry=r).set(queue)
        Gauge("flipfleet_build_info", "The replica's version, as a label; always 1.", ["version"],
              registry=r).labels(version).set(1)
        # Every series exists from the start, at 0, so that rates and alerts see them.
        for span in SPANS:
            self.spans.labels(span)

    def flip_done(self, spans: dict[str, float], bytes_in: int, bytes_out: int, pixels: int, frames: int) -> None:
        for span, seconds in spans.items():
            self.spans.labels(span).observe(seconds)
        self.bytes_in.observe(bytes_in)
        self.bytes_out.observe(bytes_out)
        self.pixels.inc(pixels)
        self.frames.inc(frames)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text format (or OpenMetrics, when the scraper asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class MetricsMiddleware:
    """Counts every request and times it to its last byte: waitress calls close() on the answer
    once it has taken all of it, after the app (and its after_request hooks) returned."""

    def __init__(self, wsgi_app, metrics: Metrics):
        self.wsgi_app = wsgi_app
        self.metrics = metrics

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status = []

        def recording_start_response(status_line, headers, exc_info=None):
            status.append(status_line.split(" ", 1)[0])
            return start_response(status_line, headers, exc_info)

        answer = self.wsgi_app(environ, recording_start_response)
        finished = lambda: self._finished(environ, started, status)  # noqa: E731
        if environ.get("flipfleet.answer") is not None and answer.__class__ is environ.get("wsgi.file_wrapper"):
            # The server knows this answer by its class and sends from the file itself: left as it
            # is, and timed to when the server closes the file (service.app.AnswerFile).
            environ["flipfleet.answer"].on_close.append(finished)
            return answer
        return ClosingIterator(answer, finished)

    def _finished(self, environ, started: float, status: list[str]) -> None:
        now = time.perf_counter()
        route = environ.get("flipfleet.route")
        if route is None:
            return  # the app never saw it (it failed before its first hook)
        self.metrics.requests.labels(route, environ.get("REQUEST_METHOD", ""), status[0] if status else "").inc()
        self.metrics.duration.labels(route).observe(now - started)
        self.metrics.in_flight.labels(route).dec()
        flip = environ.get("flipfleet.flip")
        if flip is not None:
            flip["spans"]["write"] = now - environ["flipfleet.view_done"]
            self.metrics.flip_done(**flip)
