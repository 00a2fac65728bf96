"""The one way the tests and the benchmark run locust: headless, with loadtest/locust.conf from
the repo root (as the README says), bounded in time, its CSV read back."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import ROOT
from service.sample import load_sample

# Beyond the run time: locust's start-up and its final report; only a hung run reaches it.
GRACE_SECONDS = 90
# Load after an event under test: the flips go on once it is over.
LOAD_AFTER_SECONDS = 5


@dataclasses.dataclass
class LocustRun:
    exit_code: int  # 0: no failures; 1: some requests failed (the figures say which)
    output: str
    stats: dict[str, dict[str, str]]  # locust's stats CSV, a row per request name
    failures: list[dict[str, str]]  # locust's failures CSV

    def figures(self, name: str = "/flip") -> dict:
        """The numbers of one request name, as numbers."""
        row = self.stats.get(name)
        if row is None:
            raise AssertionError(f"locust made no {name} request:\n{self.output[-3000:]}")
        return {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 3),
            "p50_ms": float(row["50%"]),
            "p95_ms": float(row["95%"]),
            "p99_ms": float(row["99%"]),
        }

    def errors(self, name: str | None = None) -> dict[str, int]:
        """Each error locust recorded (for `name`, or all) and how often."""
        return {
            row["Error"]: int(row["Occurrences"]) for row in self.failures if name is None or row["Name"] == name
        }


def run_locust(host: str, *user_classes: str, users: int, seconds: float, csv_prefix: Path, html: bool = False,
               stop: threading.Event | None = None, **env: str) -> LocustRun:
    """Run `user_classes` (all of the locustfile's when none) against `host` for `seconds`, or until
    `stop` is set: then locust ends as at its run time's end (SIGTERM), with the same report."""
    # The caller's own FLIP_PHOTO or FLIP_VERIFY must not leak into the run.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLIP_")}
    command = [
        sys.executable, "-m", "locust", "--config", "loadtest/locust.conf", "--host", host,
        "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
        "--csv", str(csv_prefix), *user_classes,
    ]
    if html:
        command += ["--html", f"{csv_prefix}.html"]
    process = subprocess.Popen(command, cwd=ROOT, env={**environ, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def stop_when_asked() -> None:
        while not done.is_set():
            if stop.wait(0.5) and not done.is_set():
                process.send_signal(signal.SIGTERM)
                return

    stopper = threading.Thread(target=stop_when_asked, daemon=True)
    if stop is not None:
        stopper.start()
    try:
        stdout, stderr = process.communicate(timeout=seconds + GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        done.set()
    output = stdout + stderr
    if process.returncode not in (0, 1):
        raise RuntimeError(f"locust exited {process.returncode}:\n{output[-3000:]}")
    return LocustRun(process.returncode, output, _stats(csv_prefix), _rows(Path(f"{csv_prefix}_failures.csv")))


def _stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    return {row["Name"]: row for row in _rows(Path(f"{csv_prefix}_stats.csv")) if row["Name"] != "Aggregated"}


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def under_load(url: str, tmp_path: Path, seconds: float, users: int = 8, start_after: float = 0,
               then: float = LOAD_AFTER_SECONDS, api_key: str = ""):
    """`users` FlipUsers post the sample to `url` (with `api_key`, if any); the block runs
    `start_after` seconds in, and the load goes on `then` seconds past it, for at most `seconds` in
    all. Yields a list that holds the finished run once the block is done."""
    photo = tmp_path / "sample.jpg"
    photo.write_bytes(load_sample(None))
    finished: list[LocustRun] = []
    raised: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        try:
            finished.append(run_locust(url, "FlipUser", users=users, seconds=seconds, csv_prefix=tmp_path / "run",
                                       stop=stop, FLIP_PHOTO=str(photo), FLIP_API_KEY=api_key))
        except BaseException as exc:  # raised again below
            raised.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(start_after)
    try:
        yield finished
        thread.join(timeout=then)
        stop.set()
    except BaseException:
        stop.set()  # the block failed: its load need not be waited out
        raise
    finally:
        thread.join(timeout=seconds + GRACE_SECONDS + 30)
    if raised:
        raise raised[0]
    assert finished, "locust did not finish"
