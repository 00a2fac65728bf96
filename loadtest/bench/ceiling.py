"""The ceiling: the flip alone, one process per core, no HTTP at all. For a JPEG there are two ways
to flip (re-encoding with Pillow, or TurboJPEG's lossless transform), and each has its own."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time

from PIL import Image

from loadtest.memory import glibc_environment
from loadtest.overhead import pillow_alone
from service import jpeg_lossless
from service.config import Settings
from service.imaging import keep_image_memory
from service.sample import load_sample

PATHS = ("re-encoded", "lossless")


def flip_alone(path: str):
    """The work of one flip of `path`, and nothing else."""
    if path == "lossless":
        return lambda data: jpeg_lossless.transform(data, Image.Transpose.FLIP_TOP_BOTTOM)
    return pillow_alone


def _flip_for(seconds: float, sample: bytes, start: float, path: str) -> tuple[int, float]:
    """Flips done in `seconds`, and the CPU seconds they took, on a worker thread as waitress runs
    them (see loadtest.overhead), with Pillow's memory kept between pictures as the service keeps it."""
    keep_image_memory(Settings.from_env({}).pillow_blocks)
    work = flip_alone(path)

    def loop() -> tuple[int, float]:
        while time.time() < start:
            time.sleep(0.01)
        done, cpu, deadline = 0, time.process_time(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            work(sample)
            done += 1
        return done, time.process_time() - cpu

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(loop).result()


def ceiling(seconds: float, processes: int, path: str = "re-encoded") -> tuple[float, float]:
    """Flips per second with the flip alone, one process per core, all starting together, and
    the CPU seconds of one flip. The processes set glibc as the image does (loadtest.memory), so
    that the stack is compared with the same allocator."""
    sample = load_sample(None)
    start = time.time() + 2  # let every process be ready first
    with _environment(glibc_environment()), multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(_flip_for, [(seconds, sample, start, path)] * processes)
    done = sum(count for count, _ in results)
    return done / seconds, sum(cpu for _, cpu in results) / max(done, 1)


@contextlib.contextmanager
def _environment(environment: dict[str, str]):
    """os.environ is `environment` while the block starts processes (a Pool takes no env; glibc
    reads its settings once, as a process starts), then as it was."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def available(path: str) -> bool:
    return path != "lossless" or jpeg_lossless.available()
