"""A DNS server for nginx's `resolver` in tests: it answers A queries from addresses the test sets,
and can hold a query until the test releases it, so a test chooses the instant at which nginx's
`resolve` sees its replica list change."""

from __future__ import annotations

import socket
import struct
import threading

A, IN = 1, 1
NXDOMAIN = 3


def question_of(query: bytes) -> tuple[str, int, int]:
    """The name, type and the end offset of a query's first question."""
    labels, at = [], 12
    while query[at]:
        length = query[at]
        labels.append(query[at + 1:at + 1 + length].decode("ascii").lower())
        at += 1 + length
    qtype, _ = struct.unpack("!HH", query[at + 1:at + 5])
    return ".".join(labels), qtype, at + 5


def reply_to(query: bytes, addresses: list[str] | None) -> bytes:
    """The answer to `query`: A records for `addresses`, none for another type, NXDOMAIN for None."""
    _, qtype, end = question_of(query)
    records = [] if addresses is None or qtype != A else addresses
    flags = 0x8180 | (query[2] & 0x01) << 8 | (NXDOMAIN if addresses is None else 0)
    header = query[:2] + struct.pack("!HHHHH", flags, 1, len(records), 0, 0)
    # Each record names the question by a pointer to offset 12; a TTL of 1 s (nginx's valid= rules).
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, A, IN, 1, 4) + socket.inet_aton(ip) for ip in records)
    return header + query[12:end] + answers


class DNSServer:
    """UDP on every address of this host, on `port`; `set(name, addresses)` decides the answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.names: dict[str, list[str]] = {}
        self.answered: list[tuple[str, list[str] | None]] = []
        self.changed = threading.Condition()
        self.holding = False
        self.held: list[tuple[bytes, tuple]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> DNSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def set(self, name: str, addresses: list[str]) -> None:
        with self.changed:
            self.names[name] = list(addresses)

    def wait_answered(self, name: str, addresses: list[str], timeout: float) -> bool:
        """Whether a query for `name` gets `addresses` as its answer within `timeout` s."""
        with self.changed:
            start = len(self.answered)
            return self.changed.wait_for(lambda: (name, addresses) in self.answered[start:], timeout=timeout)

    def hold_next(self, timeout: float) -> bool:
        """Hold the next query unanswered; whether one arrived within `timeout` s (then held)."""
        with self.changed:
            self.holding = True
            return self.changed.wait_for(lambda: self.held, timeout=timeout)

    def release(self) -> None:
        """Answer the held queries with the addresses set now, and stop holding."""
        with self.changed:
            self.holding = False
            held, self.held = self.held, []
            for query, client in held:
                self._answer(query, client)

    def _answer(self, query: bytes, client) -> None:
        name = question_of(query)[0]
        addresses = self.names.get(name)
        self.sock.sendto(reply_to(query, addresses), client)
        self.answered.append((name, addresses))
        self.changed.notify_all()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                query, client = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            with self.changed:
                if self.holding:
                    self.held.append((query, client))
                    self.changed.notify_all()
                else:
                    self._answer(query, client)
