"""The most memory one replica can need at once, worked out from its settings: what its memory
limit must hold (compose's WEB_MEMORY_LIMIT and the Kubernetes limit are checked against it).

Every term is a bound the service enforces, not a typical figure:
- nginx sends a replica at most FLIP_QUEUE requests at once (max_conns), and each holds its body
  (at most FLIP_MAX_BYTES, in waitress's buffer) and, once flipped, its answer (at most
  ANSWER_FACTOR x FLIP_MAX_BYTES) and its connection's send buffer in the kernel (SEND_BUFFER_BYTES,
  which the kernel doubles for its bookkeeping; waitress sends a picture from the flip's own bytes);
- a running flip copies its body out of waitress, and holds the decoded frame and the transposed
  frames at once (service/imaging.py frees the decoded one before encoding), at most 4 bytes a pixel;
- the express lane runs one more flip beside each running one, at a fraction of the pixel limits;
- the allocator: the image's jemalloc (LD_PRELOAD) rounds each block up to one of its size classes,
  four to each doubling, so by less than a quarter; it keeps the pages a flip frees for the next
  flip, until the replica hands them back after IDLE_SECONDS without a flip (service/allocator.py).
  A kept page is handed out again before a new one is taken, so it counts within the bounds
  above, not beside them. Under glibc's malloc instead, each arena (MALLOC_ARENA_MAX)
  keeps up to MALLOC_TRIM_THRESHOLD_ free at the top of its heap, which another arena's thread
  cannot use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from service.config import ANSWER_FACTOR, EXPRESS_FRACTION, Settings
from service.server import SEND_BUFFER_BYTES

MiB = 1024 * 1024
# Pillow's widest modes (RGBA, CMYK, I, F) take 4 bytes a pixel.
BYTES_A_PIXEL = 4
# The interpreter, Flask, waitress, Pillow and its codecs, the sample and its two cached flips.
RUNTIME_BYTES = 128 * MiB
# glibc's own defaults: 128 KiB trim threshold, 8 arenas a core (64-bit).
GLIBC_TRIM_THRESHOLD, GLIBC_ARENAS_A_CORE = 128 * 1024, 8
# jemalloc's size classes above 16 KiB are four to each doubling: a block of n bytes takes less
# than n + n / 4 (a 25 MiB body takes 28 MiB, a 50 MiB answer 56 MiB).
JEMALLOC_ROUNDING = 4


def uses_jemalloc(environ: Mapping[str, str]) -> bool:
    """Whether a process started with `environ` allocates with jemalloc (the image preloads it)."""
    return "libjemalloc" in environ.get("LD_PRELOAD", "")


def kept_heap_tops(environ: Mapping[str, str]) -> int:
    """The free bytes glibc may keep at the top of its arenas' heaps under these MALLOC_* settings."""
    arenas = int(environ.get("MALLOC_ARENA_MAX") or GLIBC_ARENAS_A_CORE * (os.cpu_count() or 1))
    return arenas * int(environ.get("MALLOC_TRIM_THRESHOLD_") or GLIBC_TRIM_THRESHOLD)


def allocator_term(held: int, environ: Mapping[str, str]) -> tuple[str, int]:
    """What the allocator adds to `held` bytes of blocks above the runtime: its name and bytes."""
    if uses_jemalloc(environ):
        return "jemalloc's size classes, each block rounded up by under a quarter", held // JEMALLOC_ROUNDING
    return "glibc's free heap tops, kept for the next request", kept_heap_tops(environ)


def worst_case(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Bytes, by what holds them, when every bound is reached at once, for a process whose
    allocator `environ` sets (this one's by default: the image's, in a replica)."""
    flip = BYTES_A_PIXEL * (settings.max_pixels + settings.max_total_pixels)
    blocks = {
        "requests held: bodies, answers, send buffers":
            settings.queue * (settings.max_bytes + ANSWER_FACTOR * settings.max_bytes + 2 * SEND_BUFFER_BYTES),
        "running flips' copies of their bodies": 2 * settings.concurrency * settings.max_bytes,
        "running flips' pixels, decoded and transposed": settings.concurrency * flip,
        "express flips' pixels": settings.concurrency * flip // EXPRESS_FRACTION,
    }
    allocator, slack = allocator_term(sum(blocks.values()), environ)
    return {"the runtime": RUNTIME_BYTES, **blocks, allocator: slack}


def needed(settings: Settings, environ: Mapping[str, str] = os.environ) -> int:
    return sum(worst_case(settings, environ).values())


def report(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The worst case term by term, and in all, in MiB."""
    terms = worst_case(settings, environ)
    lines = [f"{size / MiB:8.0f} MiB  {what}" for what, size in terms.items()]
    return "\n".join([*lines, f"{sum(terms.values()) / MiB:8.0f} MiB  in all"])


if __name__ == "__main__":
    # python -m service.memory: the worst case for the settings and allocator of this environment.
    print(report(Settings.from_env()))
