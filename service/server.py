"""waitress for the flip service: tuned for a few large uploads, and a stop that cuts no answer.

waitress stops at once on a signal, dropping what it holds. A replica told to stop here takes in
the connections already made to it, stops accepting, closes its idle keep-alive connections,
finishes every request it has received or is receiving (for at most `drain_seconds`), then
exits: nginx sends new requests elsewhere.
"""

from __future__ import annotations

import io
import logging
import select
import signal
import socket
import threading
import time

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.receiver import FixedStreamReceiver

from service.config import Settings

log = logging.getLogger("flipfleet")
IO_CHUNK = 256 * 1024
# What waitress holds of an answer before the app's thread waits for it to be sent, and the
# kernel's send buffer of each connection (service.memory).
SEND_BUFFER_BYTES = 4 * 1024 * 1024
# How often the serving loop looks up from its sockets to see whether a stop was asked for.
POLL_SECONDS = 0.2
# How long a draining replica keeps a new connection that has sent nothing yet: nginx writes
# its request as it connects, so only a client that never speaks waits this long.
FIRST_WORD_SECONDS = 2.0


class BodyChunks:
    """A request body of known length, kept as the chunks it arrives in and joined once when the app
    reads it. waitress grows one buffer as a body arrives, which copies the body again at every
    growth the allocator cannot make in place (jemalloc's, often): 26 appends of 256 KiB took
    6.8 ms of CPU that way under the image's jemalloc, 0.7 ms kept and joined."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._length = 0
        self._file: io.BytesIO | None = None

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._length += len(data)

    def __len__(self) -> int:
        return self._length

    def getfile(self) -> io.BytesIO:
        # A BytesIO shares the bytes it starts with, and hands them back whole on a read of all.
        if self._file is None:
            self._file = io.BytesIO(b"".join(self._chunks))
            self._chunks = []
        return self._file

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()


class RequestParser(HTTPRequestParser):
    """waitress's parser, with a body of known length received into BodyChunks."""

    def parse_header(self, header_plus) -> None:
        super().parse_header(header_plus)
        if isinstance(self.body_rcv, FixedStreamReceiver):
            self.body_rcv.buf = BodyChunks()


class Channel(HTTPChannel):
    parser_class = RequestParser


def build_server(settings: Settings, app):
    """A waitress server for `app`; not yet serving."""
    server = waitress.create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        # Twice the app's limit: the app answers 413 as JSON up to there, waitress beyond.
        max_request_body_size=2 * settings.max_bytes,
        ident="flipfleet",
        # Keep bodies in memory rather than temp files, and read them in 256 KiB steps rather
        # than 8 KiB ones: together ~10 % of a flip's time (loadtest.overhead). (A body of known
        # length goes to BodyChunks instead of this buffer; a chunked one stays here.)
        inbuf_overflow=2 * settings.max_bytes,
        outbuf_overflow=2 * settings.max_bytes,
        recv_bytes=IO_CHUNK,
        outbuf_high_watermark=SEND_BUFFER_BYTES,
        # Keep reading while a request runs, so that a client that leaves is noticed
        # (waitress.client_disconnected) and its waiting flip gives up its place.
        channel_request_lookahead=1,
    )
    # Each connection's send buffer holds most of an answer: the serving loop hands a photo's answer
    # to the kernel in a few sends rather than in ~100 of the default buffer's size, each a turn of
    # the loop in Python (the kernel caps it at net.core.wmem_max). waitress takes no argument for it.
    server.adj.socket_options = [*server.adj.socket_options, (socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)]
    server.channel_class = Channel  # bodies in BodyChunks
    return server


class GracefulServer:
    """Runs a waitress server until `stop()`, then drains it."""

    def __init__(self, server, drain_seconds: float):
        self.server = server
        self.drain_seconds = drain_seconds
        self._stop = threading.Event()

    def stop(self, *_signal_args) -> None:
        """Ask the serving loop to drain and return; safe from a signal handler."""
        if self._stop.is_set():
            raise SystemExit(1)  # a second signal: the operator wants it gone now
        self._stop.set()
        self.server.pull_trigger()  # wake the loop from its poll

    def serve_until_stopped(self, signals=(signal.SIGINT, signal.SIGTERM)) -> int:
        """Serve until one of `signals` (or `stop()`), drain; the requests cut by the deadline."""
        for sig in signals:
            signal.signal(sig, self.stop)
        socket_map = self.server._map
        while not self._stop.is_set():
            wasyncore.loop(timeout=POLL_SECONDS, map=socket_map, use_poll=True, count=1)
        return self.drain()

    def drain(self) -> int:
        server = self.server
        # Closing the listener resets the connections the kernel holds for it, on which nginx may
        # already have sent a flip it sends again only once: take them in first. Then stop accepting:
        # new connections are refused, and nginx tries another replica.
        # (dispatcher.close, not server.close: that would also close the wake-up trigger.)
        self._accept_waiting()
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + self.drain_seconds
        busy = self._close_idle_channels()
        log.info("draining: %d connection(s) with requests in progress", busy)
        while busy and time.monotonic() < deadline:
            wasyncore.loop(timeout=POLL_SECONDS, map=server._map, use_poll=True, count=1)
            busy = self._close_idle_channels()
        if busy:
            log.warning("drain deadline (%ss) reached with %d connection(s) still busy", self.drain_seconds, busy)
        server.task_dispatcher.shutdown(timeout=1)
        return busy

    def _accept_waiting(self) -> None:
        """Accept every connection the kernel has completed for the listener."""
        poller = select.poll()
        poller.register(self.server.socket, select.POLLIN)
        for _ in range(self.server.adj.backlog):  # bounded: the kernel holds no more than this
            if not poller.poll(0):
                return
            self.server.handle_accept()

    def _close_idle_channels(self) -> int:
        """Mark every channel with nothing in progress to close; count the others."""
        busy = 0
        now = time.time()  # waitress's clock for channel activity
        for channel in list(self.server.active_channels.values()):
            # A connection that has not spoken yet is about to: its request is on its way.
            silent = channel.last_activity == channel.creation_time
            unheard = silent and now - channel.creation_time < FIRST_WORD_SECONDS
            in_progress = unheard or channel.requests or channel.request is not None or channel.total_outbufs_len
            if in_progress:
                busy += 1
            elif not channel.will_close:
                channel.will_close = True  # closed by the loop on its next turn
        # Closed channels leave the map one loop turn later; count those still open as busy.
        open_channels = sum(1 for ch in self.server._map.values() if ch is not self.server.trigger)
        return max(busy, 1 if open_channels else 0)
