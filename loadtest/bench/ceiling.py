"""The ceiling: Pillow alone flipping the sample, one process per core, no HTTP at all."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time

from loadtest.overhead import pillow_alone
from service.config import Settings
from service.imaging import keep_image_memory
from service.sample import load_sample


def _flip_for(seconds: float, sample: bytes, start: float) -> int:
    """Flips done in `seconds`, on a worker thread as waitress runs them (see loadtest.overhead),
    with Pillow's memory kept between pictures as the service keeps it."""
    keep_image_memory(Settings.from_env({}).pillow_blocks)
    def loop() -> int:
        while time.time() < start:
            time.sleep(0.01)
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            pillow_alone(sample)
            done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(loop).result()


def ceiling(seconds: float, processes: int) -> float:
    """Flips per second with Pillow alone, one process per core, all starting together."""
    sample = load_sample(None)
    start = time.time() + 2  # let every process be ready first
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = pool.starmap(_flip_for, [(seconds, sample, start)] * processes)
    return sum(done) / seconds
