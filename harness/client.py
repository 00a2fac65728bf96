"""An HTTP client that reads the answer while it is still sending the body, as curl and browsers
do: a refusal that nginx sends before reading a body (admission, 413) is seen at once, and the
rest of the body is not sent. (`requests` sends the whole body before it reads anything.)"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import threading
import time
from email.message import Message
from urllib.parse import urlsplit

CHUNK = 256 * 1024


@dataclasses.dataclass
class Answer:
    status: int | None  # None: no answer (see `error`)
    headers: Message
    body: bytes
    seconds: float  # from connecting to the whole answer
    status_seconds: float  # from connecting to the status line: when the client knew
    body_sent: int  # bytes of the body sent in all
    error: str | None = None

    def json(self) -> dict:
        import json

        return json.loads(self.body)


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 120) -> Answer:
    """POST `body` to `url` on a connection of its own."""
    parts = urlsplit(url)
    started = time.monotonic()
    sent = 0
    stop = threading.Event()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
                "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

        def send_body() -> None:
            nonlocal sent
            view = memoryview(body)
            while sent < len(body) and not stop.is_set():
                try:
                    sent += sock.send(view[sent : sent + CHUNK])
                except OSError:
                    return  # the server closed: the answer (or its absence) says why

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
            status_seconds = time.monotonic() - started
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            stop.set()
            sender.join(timeout)
            elapsed = time.monotonic() - started
            return Answer(None, Message(), b"", elapsed, elapsed, sent, repr(exc))
        seconds = time.monotonic() - started
        stop.set()
        sender.join(timeout)
        return Answer(response.status, response.headers, data, seconds, status_seconds, sent)
