"""CPU seconds of one flip in the process that runs it: the median over some flips after a first,
on a worker thread as waitress runs the app, with Pillow's freed blocks kept as `python -m service`
keeps them. It imports only `service`, so that it also runs in a replica's container, which has
no loadtest package (loadtest.containers passes it the source):

    python -m loadtest.flip_cpu lossless|re-encoded
"""

from __future__ import annotations

import concurrent.futures
import statistics
import sys
import time
from collections.abc import Callable

from service.config import Settings
from service.imaging import keep_image_memory


def cpu_per_flip(flip: Callable[[bytes], object], data: bytes, flips: int = 5) -> float:
    """Median CPU seconds of `flip(data)` over `flips`, after a first that loads the codecs."""
    keep_image_memory(Settings.from_env().pillow_blocks)

    def measure() -> float:
        flip(data)
        spent = []
        for _ in range(flips):
            started = time.process_time()
            flip(data)
            spent.append(time.process_time() - started)
        return statistics.median(spent)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(measure).result()


if __name__ == "__main__":
    from service import imaging
    from service.sample import load_sample

    lossless = sys.argv[1] == "lossless"
    print(cpu_per_flip(lambda data: imaging.flip(data, lossless=lossless), load_sample(None)))
