"""The most memory one replica can need at once, worked out from its settings: what its memory
limit must hold (compose's WEB_MEMORY_LIMIT and the Kubernetes limit are checked against it).

Every term is a bound the service enforces, not a typical figure:
- nginx sends a replica at most FLIP_QUEUE requests at once (max_conns), and each holds its body
  (at most FLIP_MAX_BYTES, in waitress's buffer) and, once flipped, its answer (at most
  ANSWER_FACTOR x FLIP_MAX_BYTES) and waitress's send buffer for it;
- a running flip copies its body out of waitress, and holds the decoded frame and the transposed
  frames at once (service/imaging.py frees the decoded one before encoding), at most 4 bytes a pixel;
- the express lane runs one more flip beside each running one, at a fraction of the pixel limits.
"""

from __future__ import annotations

from service.config import ANSWER_FACTOR, EXPRESS_FRACTION, Settings
from service.server import SEND_BUFFER_BYTES

MiB = 1024 * 1024
# Pillow's widest modes (RGBA, CMYK, I, F) take 4 bytes a pixel.
BYTES_A_PIXEL = 4
# The interpreter, Flask, waitress, Pillow and its codecs, the sample and its two cached flips.
RUNTIME_BYTES = 128 * MiB


def worst_case(settings: Settings) -> dict[str, int]:
    """Bytes, by what holds them, when every bound is reached at once."""
    flip = BYTES_A_PIXEL * (settings.max_pixels + settings.max_total_pixels)
    return {
        "the runtime": RUNTIME_BYTES,
        "requests held: bodies, answers, send buffers":
            settings.queue * (settings.max_bytes + ANSWER_FACTOR * settings.max_bytes + SEND_BUFFER_BYTES),
        "running flips' copies of their bodies": 2 * settings.concurrency * settings.max_bytes,
        "running flips' pixels, decoded and transposed": settings.concurrency * flip,
        "express flips' pixels": settings.concurrency * flip // EXPRESS_FRACTION,
    }


def needed(settings: Settings) -> int:
    return sum(worst_case(settings).values())


if __name__ == "__main__":
    # python -m service.memory: the worst case for the settings in this environment, term by term.
    settings = Settings.from_env()
    for what, size in worst_case(settings).items():
        print(f"{size / MiB:8.0f} MiB  {what}")
    print(f"{needed(settings) / MiB:8.0f} MiB  in all")
