"""What the tests and the benchmark share: real services started and driven (a local
`python -m service`, compose stacks, locust runs, HTTP clients), and the CPU and memory they use."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, interval: float = 0.25):
    """Poll `predicate` until it returns something true or `timeout` seconds pass; returns
    its last value. Bounded by design."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
