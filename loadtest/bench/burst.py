"""The article's experiment: 10 concurrent POST /flip of the 24 MP sample, each on its own
connection; seconds to the first and the last answer."""

from __future__ import annotations

import concurrent.futures
import http.client
import threading
import time

BURST = 10


def burst(url: str, photo: bytes, clients: int = BURST, query: str = "") -> dict:
    """`clients` POST /flip at once, each on its own connection; seconds to first and last answer."""
    host, port = url.removeprefix("http://").split(":")
    ready = threading.Barrier(clients + 1)

    def one() -> tuple[float, int]:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.connect()
        connection.sock.settimeout(180)  # ten flips queue behind each other: allow for it, bounded
        ready.wait(timeout=60)
        connection.request("POST", f"/flip?{query}" if query else "/flip", body=photo,
                           headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        connection.close()
        return time.perf_counter(), response.status

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one) for _ in range(clients)]
        ready.wait(timeout=60)
        started = time.perf_counter()
        results = [f.result() for f in futures]
    finished = sorted(t - started for t, _ in results)
    return {
        "burst_first_s": round(finished[0], 3),
        "burst_last_s": round(finished[-1], 3),
        "burst_failures": sum(status != 200 for _, status in results),
    }
