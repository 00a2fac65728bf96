"""What glibc's settings in the image do to a replica's memory under floods of large uploads.

    python -m loadtest.memory [--rounds 4] [--clients 10]

Starts `python -m service` in turns: with glibc set as the image sets it (the Dockerfile's
MALLOC_* and GLIBC_TUNABLES), with glibc's sliding mmap threshold (neither threshold set),
with glibc's trim threshold (the image's mmap threshold only), and with huge pages for its large
mappings (glibc.malloc.hugetlb=1). Each gets rounds of `--clients`
concurrent POST /flip of a 20 MB picture (4300x5300 random noise, quality 90); prints the
process's peak resident memory after each round, and what it holds once the rounds are over.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import random
import re
import threading
from pathlib import Path

import requests
from PIL import Image

from harness import ROOT
from harness.service import running_service
from service.config import Settings

# The environment variables that glibc's malloc reads (MALLOC_ARENA_MAX, GLIBC_TUNABLES, ...).
GLIBC_PREFIXES = ("MALLOC_", "GLIBC_")
# glibc's settings as the image's Dockerfile sets them, for local processes that run as a replica.
IMAGE_ENV = {key: value for key, value in re.findall(r"^\s+([A-Z][A-Z0-9_]*)=(\S+)", (ROOT / "Dockerfile").read_text(),
                                                     re.M) if key.startswith(GLIBC_PREFIXES)}


def glibc_environment(variables: dict[str, str] = IMAGE_ENV) -> dict[str, str]:
    """This process's environment with glibc set by `variables` only (the image's settings by
    default): none of the shell's own MALLOC_ or GLIBC_ variables."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith(GLIBC_PREFIXES)}, **variables}


def without(*names: str) -> dict[str, str]:
    return {key: value for key, value in IMAGE_ENV.items() if key not in names}


# Huge pages for glibc's large mappings: a lossless flip's CPU x0.7, but an AVIF flip holds 7 to
# 15 % more than its pixels are counted for (service/imaging.py's PEAK_BYTES_PER_PIXEL).
HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# Setting either threshold turns glibc's sliding mmap threshold off: the sliding one needs both unset.
VARIANTS = {"as the image runs it": IMAGE_ENV,
            "sliding mmap threshold": without("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"),
            "glibc's trim threshold": without("MALLOC_TRIM_THRESHOLD_"),
            "with huge pages": {**IMAGE_ENV, **HUGE_PAGES}}


def noise_jpeg(size: tuple[int, int] = (4300, 5300)) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(1).randbytes(size[0] * size[1] * 3)).save(out, "JPEG", quality=90)
    return out.getvalue()


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def floods(env: dict[str, str], picture: bytes, rounds: int, clients: int) -> tuple[list[float], float]:
    """Peak resident MiB after each round, and what the process holds at the end."""
    with running_service(base=glibc_environment(env)) as service:
        pid, peak, stop = service.process.pid, [0.0], threading.Event()

        def watch() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], resident_mib(pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        peaks = []
        try:
            for _ in range(rounds):
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    statuses = list(pool.map(lambda _: requests.post(
                        service.url + "/flip", data=picture, headers={"Content-Type": "image/jpeg"},
                        timeout=300).status_code, range(clients)))
                if set(statuses) != {200}:
                    raise RuntimeError(f"a flip failed: {statuses}")
                peaks.append(peak[0])
        finally:
            stop.set()
            watcher.join()
        return peaks, resident_mib(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    queue = Settings.from_env({}).queue
    parser.add_argument("--clients", type=int, default=queue, help=f"concurrent uploads a round (FLIP_QUEUE: {queue})")
    args = parser.parse_args(argv)
    picture = noise_jpeg()
    print(f"{args.rounds} rounds of {args.clients} concurrent flips of a {len(picture) / 1e6:.1f} MB picture")
    for name, env in VARIANTS.items():
        peaks, after = floods(env, picture, args.rounds, args.clients)
        print(f"{name:>22}: peak resident MiB after each round {', '.join(f'{p:.0f}' for p in peaks)}; "
              f"{after:.0f} MiB held after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
