"""What the tests and the benchmark share: real services started and driven (a local
`python -m service`, compose stacks, locust runs, HTTP clients), and the CPU and memory they use."""

from __future__ import annotations

import contextlib
import subprocess
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


def copy_tree(target: Path) -> Path:
    """A copy of the repository's files (tracked, and new ones not ignored) at `target`, modes kept:
    for tests that change a file or run a script as a user would, away from the real tree."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((ROOT / name).read_bytes())
            (target / name).chmod((ROOT / name).stat().st_mode)
    return target
