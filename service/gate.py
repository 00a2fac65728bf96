"""The flip gate: how many flips one replica runs and holds, and in what order waiting ones run.

No web framework here: the app (service.app) turns its exceptions into HTTP answers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import os
import threading
import time
from dataclasses import dataclass, field

# The queue's flips run at this niceness, below a client's only flip (its express lane), so that
# inside a replica the CPU goes to the light client first. (Between containers, Docker's cgroups
# share the CPU; niceness orders only a replica's own threads.)
QUEUE_NICENESS = 10


class Busy(Exception):
    """The replica already holds as many flips as its queue allows."""


class OverShare(Exception):
    """This client already holds as many flips in this replica as one client may."""


class ClientGone(Exception):
    """The client went away while its flip waited: there is no one to answer."""


@dataclass
class _Client:
    held: int = 0
    waiting: collections.deque = field(default_factory=collections.deque)
    # When this client's last flip was started (a counter, not a clock); 0: never here.
    last_started: int = 0


@dataclass
class Turn:
    """One admitted flip's place: how long it waited, and whether it runs in the express lane."""

    waited: float = 0.0
    express: bool = False
    _entry: _Client | None = None
    _holds_place: bool = True  # a running place, in the queue or the lane, to give back at the end


class FlipGate:
    """At most `concurrency` flips at once, at most `queue` held (running or waiting), at most
    `client_share` of them from one client; past either bound a flip is refused at once rather
    than queued, so that nginx can try another replica.

    Waiting flips are fair between clients: the next to run is the oldest flip of the client
    whose last flip started longest ago (a client new here first). A client's only flip here
    does not wait at all while the express lane (`concurrency` more) is free: it runs beside the
    queue's, which run at a lower priority. So a client with one flip in flight gets its answer
    about as soon as if it were alone, however many another client has queued. One client's
    flips run in the order they came, and a flip whose client has gone while it waited gives its
    place up.
    """

    # How often a waiting flip looks whether its client is still there.
    CHECK_SECONDS = 0.2

    def __init__(self, concurrency: int, queue: int, client_share: int | None = None):
        self.concurrency = concurrency
        self.queue = queue
        self.client_share = client_share or queue
        self.held = 0  # flips admitted and not yet done
        self.admitted = 0  # flips admitted so far
        self._running = 0
        self._express = 0
        self._clients: dict[str, _Client] = {}
        self._starts = itertools.count(1)
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._queue_threads = concurrent.futures.ThreadPoolExecutor(
            concurrency, thread_name_prefix="flip", initializer=_lower_priority)

    def run(self, turn: Turn, work, *args):
        """Run `work(*args)` for a flip admitted with `turn`: the queue's flips on threads of
        lower priority, an express one on the caller's thread."""
        if turn.express:
            return work(*args)
        try:
            running = self._queue_threads.submit(work, *args)
        except RuntimeError:  # the process is exiting past its drain deadline: no pool any more
            return work(*args)
        return running.result()

    def held_by(self, client: str) -> int:
        with self._lock:
            entry = self._clients.get(client)
            return entry.held if entry else 0

    @contextlib.contextmanager
    def admit(self, client: str = "", client_gone=lambda: False):
        """Hold a place for one flip of `client`; yields its Turn once it may run."""
        started = time.perf_counter()
        with self._lock:
            if self.held >= self.queue:
                raise Busy
            entry = self._clients.setdefault(client, _Client())
            if entry.held >= self.client_share:
                raise OverShare
            self.held += 1
            self.admitted += 1
            entry.held += 1
            turn = Turn(_entry=entry)
            if self._running < self.concurrency and not self._any_waiting():
                self._running += 1
                entry.last_started = next(self._starts)
                waiting = None
            elif entry.held == 1 and self._express < self.concurrency:
                self._express += 1
                turn.express = True
                entry.last_started = next(self._starts)
                waiting = None
            else:
                waiting = self._enqueue(entry)
        try:
            if waiting is not None:
                self._wait(entry, waiting, client_gone)
            turn.waited = time.perf_counter() - started
            try:
                yield turn
            finally:
                if not turn._holds_place:
                    pass
                elif turn.express:
                    with self._lock:
                        self._express -= 1
                else:
                    self._pass_turn()
        finally:
            with self._lock:
                self.held -= 1
                entry.held -= 1
                if not entry.held:
                    del self._clients[client]

    def to_queue(self, turn: Turn, client_gone=lambda: False) -> None:
        """Move an express flip to the queue (it turned out too large for the lane): it gives
        the lane up and waits for a turn like the others."""
        assert turn.express
        with self._lock:
            self._express -= 1
            turn.express = False
            if self._running < self.concurrency and not self._any_waiting():
                self._running += 1
                turn._entry.last_started = next(self._starts)
                return
            waiting = self._enqueue(turn._entry)
        try:
            self._wait(turn._entry, waiting, client_gone)
        except ClientGone:
            turn._holds_place = False
            raise

    def _enqueue(self, entry: _Client) -> tuple[int, threading.Event]:
        waiting = (next(self._arrivals), threading.Event())
        entry.waiting.append(waiting)
        return waiting

    def _wait(self, entry: _Client, waiting: tuple[int, threading.Event], client_gone) -> None:
        while not waiting[1].wait(self.CHECK_SECONDS):
            if client_gone():
                with self._lock:
                    if waiting in entry.waiting:  # else it was handed its turn just now
                        entry.waiting.remove(waiting)
                        raise ClientGone

    def _any_waiting(self) -> bool:
        return any(entry.waiting for entry in self._clients.values())

    def _pass_turn(self) -> None:
        # Straight to the chosen waiting flip: a newcomer never gets ahead of it.
        with self._lock:
            candidates = [entry for entry in self._clients.values() if entry.waiting]
            if not candidates:
                self._running -= 1
                return
            chosen = min(candidates, key=lambda entry: (entry.last_started, entry.waiting[0][0]))
            chosen.last_started = next(self._starts)
            chosen.waiting.popleft()[1].set()


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), QUEUE_NICENESS)
    except (AttributeError, OSError):
        pass  # no per-thread niceness here: every flip runs at the same priority
