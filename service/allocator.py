"""A replica keeps the memory a flip frees for the next flip, and hands it back once flips stop.

The image preloads jemalloc with purging off (the Dockerfile's MALLOC_CONF, dirty_decay_ms:-1):
every page a flip frees stays mapped for the next one, so a flip faults in no fresh page (under
glibc a lossless flip of 24 MP maps and faults in 150 MB of libjpeg's arrays, a third of its
CPU). jemalloc's own timed purging does not serve here: with a few blocks of 50 MB and more, it
handed every page back between two flips whatever its decay time. So the replica purges itself:
once it has held no flip for IDLE_SECONDS, it drops Pillow's kept image blocks and asks jemalloc
to hand back every free page (MallocRelease). Under glibc's malloc (a local run) it trims the
heaps instead (malloc_trim).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

from PIL import Image

log = logging.getLogger("flipfleet")

# Seconds without a flip after which a replica hands back what it keeps: long enough that steady
# load, and a client's pause between two flips, never pays for pages faulted in again.
IDLE_SECONDS = 10.0
# How often the releasing thread looks at the replica; a look is a counter read.
LOOK_SECONDS = 1.0
# jemalloc's name for every arena at once (MALLCTL_ARENAS_ALL).
ALL_ARENAS = 4096


def _process_symbol(name: str):
    """A C function of this process (its executable and what it loaded), or None."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except AttributeError:
        return None


def allocator() -> str:
    """Which allocator this process's malloc is: "jemalloc" (preloaded) or "glibc"."""
    return "jemalloc" if _process_symbol("mallctl") is not None else "glibc"


def hand_back() -> None:
    """Free Pillow's kept image blocks and hand every free page of the allocator back."""
    Image.core.clear_cache()
    mallctl = _process_symbol("mallctl")
    if mallctl is not None:
        mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        mallctl(f"arena.{ALL_ARENAS}.purge".encode(), None, None, None, 0)
        return
    trim = _process_symbol("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


class MallocRelease:
    """Calls `release` once no flip has been admitted or held for `idle_seconds`, then again only
    after the next flip: a replica that stays idle pays for one release, not one a second.
    `flips()` says how many flips were admitted so far and how many are held now (FlipGate)."""

    def __init__(self, flips: Callable[[], tuple[int, int]], idle_seconds: float = IDLE_SECONDS,
                 release: Callable[[], None] = hand_back, look_seconds: float = LOOK_SECONDS):
        self.flips = flips
        self.idle_seconds = idle_seconds
        self.release = release
        self.look_seconds = look_seconds
        self.releases = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="malloc-release", daemon=True)

    def start(self) -> MallocRelease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        idle_since, released = time.monotonic(), True  # a new process holds nothing to hand back
        admitted, _ = self.flips()
        while not self._stop.wait(self.look_seconds):
            # A flip admitted since the last look counts, however quickly it was done.
            last, (admitted, held) = admitted, self.flips()
            if held or admitted != last:
                idle_since, released = None, False
                continue
            now = time.monotonic()
            if idle_since is None:
                idle_since = now
            if not released and now - idle_since >= self.idle_seconds:
                try:
                    self.release()
                except Exception:  # a release that fails must not end the watch: log it, go on
                    log.exception("handing memory back failed")
                self.releases += 1
                released = True
