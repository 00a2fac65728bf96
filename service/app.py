"""The web layer: translates HTTP to and from service.imaging, and nothing more."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime

from flask import Flask, Response, abort, current_app, g, jsonify, request
from waitress.buffers import ReadOnlyFileBasedBuffer
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service import imaging
from service.config import Settings
from service.formats import READ_MEDIA_TYPES
from service.gate import Busy, ClientGone, FlipGate, OverShare, Turn
from service.metrics import Metrics, MetricsMiddleware
from service.sample import load_sample
from service.server import IO_CHUNK

access_log = logging.getLogger("flipfleet.access")
error_log = logging.getLogger("flipfleet.error")

ACCEPTED_TYPES = ("image/*", "application/octet-stream", "multipart/form-data")
FORM_FIELDS = ("image", "file")  # `file` is what imaginary's clients send
ERROR_STATUS = {imaging.NotAnImage: 400, imaging.TooLarge: 413, imaging.UnsupportedFormat: 415,
                imaging.TooCostly: 422}
REFUSAL_REASON = {imaging.NotAnImage: "not_a_picture", imaging.TooLarge: "picture_too_large",
                  imaging.UnsupportedFormat: "unsupported_format", imaging.TooCostly: "picture_too_costly"}
# A flip refused by HTTP's own rules: what the metrics call it.
HTTP_REFUSAL_REASON = {400: "bad_request", 413: "body_too_large", 415: "unsupported_media_type"}
# ?lossless=: whether a JPEG may be flipped in the DCT domain (the default) or must be re-encoded.
LOSSLESS_VALUES = {"true": True, "false": False}
# A client's request id is echoed into logs and headers, so only a safe, short one is kept.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STARTED = time.monotonic()


class FlipApp(Flask):
    """Flask, with OPTIONS answered without the empty HTML page Flask answers it with."""

    def make_default_options_response(self) -> Response:
        """OPTIONS on a route: 204 with Flask's Allow and no body, so no content type (every
        answer of the service is JSON or a picture)."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(settings: Settings | None = None) -> Flask:
    """The flip service; `settings` default to the environment's (Settings.from_env)."""
    settings = settings or Settings.from_env()
    app = FlipApp(__name__)
    app.config.from_mapping(MAX_CONTENT_LENGTH=settings.max_bytes, SETTINGS=settings)
    gate = app.extensions["flip_gate"] = FlipGate(settings.concurrency, settings.queue, settings.client_share)
    app.extensions["flipped_sample"] = {}
    app.extensions["flipped_sample_lock"] = threading.Lock()
    metrics = app.extensions["metrics"] = Metrics(settings.version, settings.queue)
    metrics.held.set_function(lambda: gate.held)
    app.wsgi_app = MetricsMiddleware(app.wsgi_app, metrics)

    app.before_request(_start_clock)
    app.after_request(_finish)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(imaging.ImageError, _image_error)
    app.register_error_handler(Busy, _busy)
    app.register_error_handler(OverShare, _over_share)
    app.register_error_handler(ClientGone, _client_gone)
    app.register_error_handler(MemoryError, _out_of_memory)
    app.register_error_handler(Exception, _internal_error)

    app.add_url_rule("/", "whoami", whoami, methods=["GET"])
    app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
    app.add_url_rule("/flip", "flip", flip, methods=["POST"])
    app.add_url_rule("/metrics", "metrics", metrics_page, methods=["GET"])
    return app


def whoami() -> Response:
    return Response(f"flipfleet replica {_replica()} (pid {os.getpid()})\n", mimetype="text/plain")


def healthz() -> Response:
    return jsonify(
        status="ok",
        replica=_replica(),
        version=_settings().version,
        pid=os.getpid(),
        uptime_s=round(time.monotonic() - STARTED, 1),
    )


def flip() -> Response:
    direction = request.args.get("direction", "vertical")
    if direction not in imaging.DIRECTIONS:
        abort(400, f"direction must be one of {', '.join(imaging.DIRECTIONS)}, not {direction!r}")
    asked = request.args.get("lossless", "true")
    if asked not in LOSSLESS_VALUES:
        abort(400, f"lossless must be one of {', '.join(LOSSLESS_VALUES)}, not {asked!r}")
    lossless = LOSSLESS_VALUES[asked]
    if _asks_for_the_sample():
        return _flip_response(_flipped_sample(direction, lossless))
    # waitress tells whether the client (nginx) closed the connection meanwhile.
    client_gone = request.environ.get("waitress.client_disconnected", lambda: False)
    gate = current_app.extensions["flip_gate"]
    with gate.admit(_client(), client_gone) as turn:
        read_started = time.perf_counter()
        data = _uploaded_picture()
        read = time.perf_counter() - read_started
        result = _record_flip(_flip(gate, turn, data, direction, lossless, client_gone), data, turn.waited, read)
    return _flip_response(result)


class AnswerFile:
    """A flipped picture for waitress to send as it is (its wsgi.file_wrapper): waitress reads it as
    it sends rather than copying it into its own buffers first, and each read is a view of the
    answer, not a copy (waitress reads again what the socket did not take). `on_close`: what to
    call once it has gone out."""

    def __init__(self, data: bytes):
        self._view = memoryview(data)
        self._position = 0
        self.closed = False
        self.on_close: list = []

    def read(self, size: int | None = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else self._position + size
        chunk = self._view[self._position : end]
        self._position += len(chunk)
        return chunk

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(start + offset, 0)
        return self._position

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for callback in self.on_close:
                callback()


def _flip_response(result: imaging.Flipped) -> Response:
    if request.environ.get("wsgi.file_wrapper") is ReadOnlyFileBasedBuffer:
        # waitress: it sends from the file itself, and takes the views it reads as they are.
        answer = request.environ["flipfleet.answer"] = AnswerFile(result.data)
        body = ReadOnlyFileBasedBuffer(answer, IO_CHUNK)
    else:
        body = [result.data]
    response = Response(body, mimetype=result.media_type, direct_passthrough=True)
    response.content_length = len(result.data)
    response.headers["X-Image-Size"] = f"{result.width}x{result.height}"
    response.headers["X-Image-Frames"] = str(result.frames)
    response.headers["X-Flipfleet-Flip"] = f"{result.path}; {result.reason}" if result.reason else result.path
    if result.dropped:
        # The source's metadata the format's writer refused, or its 16 bits a sample written at
        # 8: the picture is flipped without them.
        response.headers["X-Flipfleet-Dropped"] = ", ".join(result.dropped)
    request.environ["flipfleet.view_done"] = time.perf_counter()
    return response


def _asks_for_the_sample() -> bool:
    """No body and no Content-Type: the demo request, `curl -X POST .../flip`."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return not request.mimetype and not request.content_length and not chunked


def _flipped_sample(direction: str, lossless: bool) -> imaging.Flipped:
    """The bundled sample flipped, made once per direction and path: a demo request that is free
    after the first."""
    cache, key = current_app.extensions["flipped_sample"], (direction, lossless)
    if key not in cache:
        # The first one is a real flip, so it takes its place in the gate like any other.
        gate = current_app.extensions["flip_gate"]
        with gate.admit(_client()) as turn, current_app.extensions["flipped_sample_lock"]:
            if key not in cache:
                sample = load_sample(_settings().sample_path or None)
                flipped = _run_flip(gate, turn, sample, direction, lossless, ours=True)
                cache[key] = _record_flip(flipped, sample, turn.waited, read=0.0)
    return cache[key]


def _record_flip(result: imaging.Flipped, data: bytes, waited: float, read: float) -> imaging.Flipped:
    """Hand a real flip's figures to the metrics, which take them once waitress has the whole answer."""
    request.environ["flipfleet.flip"] = {
        "spans": {"queue": waited, "read": read, **result.spans},
        "bytes_in": len(data), "bytes_out": len(result.data),
        "pixels": result.width * result.height * result.frames, "frames": result.frames,
    }
    return result


def metrics_page() -> Response:
    body, content_type = current_app.extensions["metrics"].exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


def _flip(gate: FlipGate, turn: Turn, data: bytes, direction: str, lossless: bool, client_gone) -> imaging.Flipped:
    try:
        return _run_flip(gate, turn, data, direction, lossless, client_gone)
    except imaging.NotAnImage:
        declared = request.mimetype
        if declared.startswith("image/") and declared not in READ_MEDIA_TYPES:
            abort(415, f"{declared} is not supported; send one of {', '.join(imaging.MEDIA_TYPES)}")
        raise


def _run_flip(gate: FlipGate, turn: Turn, data: bytes, direction: str, lossless: bool, client_gone=lambda: False,
              ours: bool = False) -> imaging.Flipped:
    """The flip, in the turn's lane. The express lane takes pictures up to its own, smaller limits
    (what the replica's memory holds beside a flip at the full ones); a larger one waits for a
    turn in the queue instead. `ours`: the bundled sample, whose answer is not held to the
    answer limit that bodies are."""
    limits, express_limits = _settings().limits, _settings().express_limits
    if ours:
        limits = dataclasses.replace(limits, max_answer_bytes=imaging.NO_LIMITS.max_answer_bytes)
    if not turn.express:
        return gate.run(turn, imaging.flip, data, direction, limits, lossless)
    try:
        return gate.run(turn, imaging.flip, data, direction, express_limits, lossless)
    except imaging.TooLarge:
        gate.to_queue(turn, client_gone)
        return gate.run(turn, imaging.flip, data, direction, limits, lossless)


def _uploaded_picture() -> bytes:
    """The picture's bytes from a raw body or a multipart form."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = [f for name in FORM_FIELDS for f in request.files.getlist(name)]
        if not files:
            other = sorted(request.files)
            hint = f" (the form has {', '.join(other)})" if other else ""
            abort(400, f"the form has no file in a field named 'image' or 'file'{hint}")
        if len(files) > 1:
            abort(400, f"send one picture per request, not {len(files)}")
        data = files[0].read()
        if not data:
            abort(400, "the file in the form is empty")
        return data
    if mimetype and not (mimetype.startswith("image/") or mimetype == "application/octet-stream"):
        abort(415, f"Content-Type {mimetype} is not accepted; send one of {', '.join(ACCEPTED_TYPES)}")
    data = _raw_body()
    if not data:
        abort(400, "the body is empty: send a picture, or no body and no Content-Type for the sample")
    return data


def _raw_body() -> bytes:
    """The body as it came. With a Content-Length, read from the server's buffer in one go:
    werkzeug's stream reads it 8 KiB at a time, about 10 ms of a photo's flip."""
    length = request.content_length
    if length is None or request.headers.get("Transfer-Encoding"):
        return request.get_data(cache=False)
    if length > current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()
    return request.environ["wsgi.input"].read(length)




def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _replica() -> str:
    return _settings().replica


def _client() -> str:
    """Who sent the flip, for the gate's fairness: the address nginx saw, else the peer's."""
    return request.headers.get("X-Flipfleet-Client") or request.remote_addr or ""


def _start_clock() -> None:
    g.started = time.perf_counter()
    route = request.url_rule.rule if request.url_rule else "other"
    request.environ["flipfleet.route"] = route
    current_app.extensions["metrics"].in_flight.labels(route).inc()
    offered = request.headers.get("X-Request-ID", "")
    g.request_id = offered if REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    started = g.get("started", time.perf_counter())
    request_id = g.get("request_id") or uuid.uuid4().hex
    elapsed_ms = (time.perf_counter() - started) * 1000
    response.headers["X-Response-Time"] = f"{elapsed_ms:.1f}ms"
    response.headers["X-Served-By"] = _replica()
    response.headers["X-Flipfleet-Version"] = _settings().version
    response.headers["X-Request-ID"] = request_id
    access_log.info(
        "%s replica=%s rid=%s %s %s %d %dB %.1fms",
        datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        _replica(),
        request_id,
        request.method,
        request.path,
        response.status_code,
        response.content_length or response.calculate_content_length() or 0,
        elapsed_ms,
    )
    return response


def _json_error(status: int, message: str, response: Response | None = None) -> Response:
    body = jsonify(error=message, status=status)
    if response is None:
        body.status_code = status
        return body
    # Keep the exception's own headers, such as Allow on a 405.
    response.set_data(body.get_data())
    response.mimetype = "application/json"
    return response


def _http_error(exc: HTTPException) -> Response:
    message = exc.description or exc.name
    if request.url_rule is not None and request.url_rule.rule == "/flip" and exc.code in HTTP_REFUSAL_REASON:
        _refused(exc.code, HTTP_REFUSAL_REASON[exc.code])
    if isinstance(exc, RequestEntityTooLarge) and message == RequestEntityTooLarge.description:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"the body is over the limit of {limit:,} bytes"
        length = request.content_length
        if request.mimetype == "multipart/form-data" and length is not None and length <= limit:
            # werkzeug's form limits, not the body's size
            message = (f"the form has more than {request.max_form_parts:,} parts, or a field that is not a file "
                       f"over {request.max_form_memory_size:,} bytes: send one picture in a field named 'image' "
                       "or 'file'")
    return _json_error(exc.code or 500, message, exc.get_response())


def _image_error(exc: imaging.ImageError) -> Response:
    status = ERROR_STATUS[type(exc)]
    _refused(status, REFUSAL_REASON[type(exc)])
    return _json_error(status, str(exc))


def _refused(status: int, reason: str) -> None:
    current_app.extensions["metrics"].refusals.labels(str(status), reason).inc()


def _busy(exc: Busy) -> Response:
    _refused(503, "busy")
    queue = current_app.extensions["flip_gate"].queue
    response = _json_error(503, f"the replica holds {queue} flips already; retry after 1 s")
    response.headers["Retry-After"] = "1"
    return response


def _over_share(exc: OverShare) -> Response:
    _refused(429, "client_share")
    share = current_app.extensions["flip_gate"].client_share
    response = _json_error(429, f"this client holds {share} flips in this replica already, the most one client may; "
                                "retry after 1 s")
    response.headers["Retry-After"] = "1"
    return response


def _client_gone(exc: ClientGone) -> Response:
    # Never delivered; nginx's code for it, so that the access log says what happened.
    return _json_error(499, "the client closed the connection while its flip waited")


def _out_of_memory(exc: MemoryError) -> Response:
    _refused(503, "out_of_memory")
    error_log.error("out of memory on %s %s", request.method, request.path)
    response = _json_error(503, "the replica is out of memory for this picture; retry later")
    response.headers["Retry-After"] = "1"
    return response


def _internal_error(exc: Exception) -> Response:
    error_log.exception("unhandled error on %s %s rid=%s", request.method, request.path, g.get("request_id"))
    return _json_error(500, "internal error; the request id is in the X-Request-ID header")
