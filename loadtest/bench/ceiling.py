"""The floor: the flip alone at its least CPU, one process per core, no HTTP at all; its rate is
the ceiling of flips per second. For a JPEG there are two ways to flip, each with its own floor:
Pillow's decode, flip and encode, and TurboJPEG's bare lossless transform (tjTransform). Each runs
in a warm process whose allocator keeps every page it got mapped (loadtest.memory.KEPT_MAPPED), so
that no flip after the first faults a page in: the same work as the library call alone."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import resource
import time

from loadtest.memory import KEPT_MAPPED, allocator_environment
from loadtest.overhead import pillow_alone
from service.config import Settings
from service.formats import jpeg_lossless
from service.imaging import keep_image_memory
from service.sample import load_sample

PATHS = ("re-encoded", "lossless")


def bare_transform(data: bytes) -> None:
    """TurboJPEG's transform of `data` turned upside down (perfect), and nothing else: no header
    edits, no copy of its answer."""

    def run(lib, handle) -> None:
        spec = jpeg_lossless._Transform(op=jpeg_lossless.TJXOP_VFLIP, options=jpeg_lossless.TJXOPT_PERFECT)
        out, size = ctypes.c_void_p(), ctypes.c_ulong()
        try:
            if lib.tjTransform(handle, data, len(data), 1, ctypes.byref(out), ctypes.byref(size),
                               ctypes.byref(spec), 0):
                jpeg_lossless._raise_error(lib, handle)
        finally:
            if out:
                lib.tjFree(out)

    jpeg_lossless._call(run)


def flip_alone(path: str):
    """The work of one flip of `path`, and nothing else."""
    return bare_transform if path == "lossless" else pillow_alone


def _flip_for(seconds: float, sample: bytes, start: float, path: str) -> tuple[int, float, int]:
    """Flips done in `seconds`, the CPU seconds they took and the pages they faulted in, on a
    worker thread as waitress runs them (see loadtest.overhead), with Pillow's memory kept between
    pictures as the service keeps it, after two flips that map what the next ones reuse."""
    keep_image_memory(Settings.from_env({}).pillow_blocks)
    work = flip_alone(path)

    def loop() -> tuple[int, float, int]:
        work(sample)
        work(sample)
        while time.time() < start:
            time.sleep(0.01)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        done, cpu, deadline = 0, time.process_time(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            work(sample)
            done += 1
        return done, time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(loop).result()


def ceiling(seconds: float, processes: int, path: str = "re-encoded") -> tuple[float, float, float]:
    """The floor of `path`: flips per second with the flip alone, one process per core, all
    starting together; the CPU seconds of one flip; the pages a flip faults in."""
    sample = load_sample(None)
    start = time.time() + 5  # let every process be ready, and warm, first
    with _environment(allocator_environment(KEPT_MAPPED)), multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(_flip_for, [(seconds, sample, start, path)] * processes)
    done = max(sum(count for count, _, _ in results), 1)
    return done / seconds, sum(cpu for _, cpu, _ in results) / done, sum(faults for _, _, faults in results) / done


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
