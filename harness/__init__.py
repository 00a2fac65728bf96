"""What the tests and the benchmark share: real services started and driven (a local
`python -m service`, compose stacks, locust runs, HTTP clients), and the CPU and memory they use."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, interval: float = 0.25):
    """Poll `predicate` until it returns something true or `timeout` seconds pass; returns
    its last value. Bounded by design."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@contextlib.contextmanager
def alongside(work, timeout: float = 60):
    """Run `work(stop)` on a thread while the block runs; `stop` is set when the block ends,
    and an exception the thread raised is raised here, so that no sampler fails unseen."""
    stop = threading.Event()
    raised: list[BaseException] = []

    def guarded() -> None:
        try:
            work(stop)
        except BaseException as exc:  # handed to the caller below
            raised.append(exc)

    thread = threading.Thread(target=guarded)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=timeout)
    assert not thread.is_alive(), f"the background work did not stop within {timeout} s"
    if raised:
        raise raised[0]
