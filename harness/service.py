"""Start `python -m service` as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping

LISTENING = re.compile(r"listening on (http://\S+)")


class LocalService:
    """A running `python -m service`: its process, base URL and output so far."""

    def __init__(self, process: subprocess.Popen, url: str, output: list[str], reader: threading.Thread):
        self.process, self.url, self.output, self._reader = process, url, output, reader

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit code, with all its output read."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Ask the process to stop with `sig`; kill it if it has not ended in 10 s."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=10)
        finally:
            self.process.kill()
            self.process.wait()
            self._reader.join(timeout=10)  # so that `output` holds the last lines


def start_service(timeout: float = 60, base: Mapping[str, str] | None = None, **env: str) -> LocalService:
    """Start the service with PORT=0 and `env` over `base` (this process's environment unless
    given); return once it has said where it listens."""
    environ = {**(os.environ if base is None else base), "PORT": "0", "PYTHONUNBUFFERED": "1", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:
        # Keep reading, so that a chatty access log never blocks the service on a full pipe.
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match and not found.is_set():
                url.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not found.wait(timeout) or not url:
        process.kill()
        process.wait()
        raise RuntimeError("the service did not start:\n" + "".join(output))
    return LocalService(process, url[0], output, reader)


@contextlib.contextmanager
def running_service(base: Mapping[str, str] | None = None, **env: str) -> Iterator[LocalService]:
    service = start_service(base=base, **env)
    try:
        yield service
    finally:
        service.stop()

