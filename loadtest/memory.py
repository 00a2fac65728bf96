"""What the replica's allocator does to its memory under floods of large uploads.

    python -m loadtest.memory [--rounds 4] [--clients 10]

Starts `python -m service` in turns: with the allocator the image sets (jemalloc preloaded and
tuned by the Dockerfile's MALLOC_CONF), with jemalloc's own defaults, with glibc's malloc tuned as
a replica would need it (two arenas, bodies over 8 MiB in mappings of their own, 16 MiB of heap
kept), and with glibc's defaults. Each gets rounds of `--clients` concurrent POST /flip of a 20 MB
picture (4300x5300 random noise, quality 90); prints the process's peak resident memory after
each round, what it holds once the rounds are over, and what it holds 30 s later.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes.util
import io
import os
import random
import re
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from harness import ROOT
from harness.service import running_service
from service.config import Settings

# The environment variables that pick and tune a process's allocator: LD_PRELOAD brings jemalloc
# in, which reads MALLOC_CONF; glibc's malloc reads MALLOC_* and GLIBC_TUNABLES.
ALLOCATOR_PREFIXES = ("MALLOC_", "GLIBC_", "LD_PRELOAD")
# The allocator as the image's Dockerfile sets it, for local processes that run as a replica. Its
# LD_PRELOAD is a bare soname, which the loader finds here too (Debian's libjemalloc2).
IMAGE_ENV = {key: value for key, value in re.findall(r"^\s+([A-Z][A-Z0-9_]*)=(\S+)", (ROOT / "Dockerfile").read_text(),
                                                     re.M) if key.startswith(ALLOCATOR_PREFIXES)}
# glibc's malloc with every page it gets kept mapped: one arena for every thread, no mapping of
# its own for any block, nothing handed back. The floor's allocator (loadtest.bench.ceiling): a
# flip there faults no page in after the first.
KEPT_MAPPED = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**32 - 1)}
# glibc's malloc tuned for a replica: two arenas, bodies and answers over 8 MiB in mappings of
# their own (floods of 20 MB uploads fragment a heap), 16 MiB kept at the top of each heap.
GLIBC_TUNED = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(8 * 2**20),
               "MALLOC_TRIM_THRESHOLD_": str(16 * 2**20)}


def jemalloc_missing() -> str | None:
    """Why local processes cannot run with the image's allocator, or None when they can."""
    if ctypes.util.find_library("jemalloc") is None:
        return "jemalloc is not installed on this machine (Debian: apt-get install libjemalloc2)"
    return None


def allocator_environment(variables: dict[str, str] = IMAGE_ENV) -> dict[str, str]:
    """This process's environment with the allocator set by `variables` only (the image's by
    default): none of the shell's own LD_PRELOAD, MALLOC_ or GLIBC_ variables."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith(ALLOCATOR_PREFIXES)},
            **variables}


VARIANTS = {"as the image runs it": IMAGE_ENV,
            "jemalloc's defaults": {"LD_PRELOAD": IMAGE_ENV["LD_PRELOAD"]},
            "glibc, tuned": GLIBC_TUNED,
            "glibc's defaults": {}}


def noise_jpeg(size: tuple[int, int] = (4300, 5300)) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(1).randbytes(size[0] * size[1] * 3)).save(out, "JPEG", quality=90)
    return out.getvalue()


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def floods(env: dict[str, str], picture: bytes, rounds: int, clients: int) -> tuple[list[float], float, float]:
    """Peak resident MiB after each round, what the process holds at the end, and 30 s later."""
    with running_service(base=allocator_environment(env)) as service:
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
        after = resident_mib(pid)
        time.sleep(30)
        return peaks, after, resident_mib(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    queue = Settings.from_env({}).queue
    parser.add_argument("--clients", type=int, default=queue, help=f"concurrent uploads a round (FLIP_QUEUE: {queue})")
    args = parser.parse_args(argv)
    missing = jemalloc_missing()
    if missing:
        parser.error(missing)
    picture = noise_jpeg()
    print(f"{args.rounds} rounds of {args.clients} concurrent flips of a {len(picture) / 1e6:.1f} MB picture")
    for name, env in VARIANTS.items():
        peaks, after, later = floods(env, picture, args.rounds, args.clients)
        print(f"{name:>20}: peak resident MiB after each round {', '.join(f'{p:.0f}' for p in peaks)}; "
              f"{after:.0f} MiB held after, {later:.0f} MiB 30 s later")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
