"""A client of its own address: run in a container on a stack's network, it keeps N flips in flight
for a bounded time and prints what it got, as JSON. Standard library only (the web image has no
`requests`); the picture is the bundled sample made at a given size.

    python -m harness.flipclient http://nginx:8080 --connections 40 --seconds 15 --size 1600x1200
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import resource
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def flip_loop(url: str, address: str, body: bytes, until: float, results: list, lock: threading.Lock,
              impatient: bool) -> None:
    """POST /flip to `address` (url's host, looked up once) on a new connection each time until
    `until`; record (status, seconds, error text)."""
    parts = urlsplit(url)
    while time.monotonic() < until:
        started = time.monotonic()
        connection = http.client.HTTPConnection(address, parts.port, timeout=120)
        try:
            connection.request("POST", "/flip", body=body,
                               headers={"Content-Type": "image/jpeg", "Host": parts.netloc})
            response = connection.getresponse()
            answer = response.read()
            outcome = (response.status, time.monotonic() - started,
                       "" if response.status == 200 else answer[:300].decode(errors="replace"),
                       response.getheader("Retry-After") or "", len(answer))
        except (OSError, http.client.HTTPException) as exc:
            outcome = (0, time.monotonic() - started, repr(exc), "", 0)
        finally:
            connection.close()
        with lock:
            results.append(outcome)
        if outcome[0] != 200:
            # What a refusal asks (Retry-After), as HTTP clients that retry do; --impatient: 50 ms.
            time.sleep(0.05 if impatient or not outcome[3].isdigit() else min(float(outcome[3]), 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--size", default="1600x1200", help="WIDTHxHEIGHT of the picture sent")
    parser.add_argument("--impatient", action="store_true", help="retry 50 ms after a refusal, whatever it asks")
    parser.add_argument("--start-at", type=float, default=0.0,
                        help="the machine's clock (time.time()) to start at, so that several clients start together")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 < args.connections <= 200:
        parser.error("at most 600 s and 200 connections: every load here is bounded")
    from service.sample import make_sample  # the web image's own copy of the service

    width, height = (int(v) for v in args.size.split("x"))
    body = make_sample(width, height)
    time.sleep(max(0.0, min(args.start_at - time.time(), 120)))
    late_s = max(0.0, time.time() - args.start_at) if args.start_at else 0.0
    until = time.monotonic() + args.seconds
    # Looked up once: a client on a machine of its own asks its own resolver, not the stack's (on
    # Docker's network, a lookup per connection would be CPU of dockerd's DNS on the stack's cores).
    address = socket.gethostbyname(urlsplit(args.url).hostname)
    results: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=flip_loop, args=(args.url, address, body, until, results, lock, args.impatient))
               for _ in range(args.connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 180)
    statuses = collections.Counter(status for status, *_ in results)
    refusals = collections.Counter(f"{status} {text} (Retry-After: {retry})"
                                   for status, _, text, retry, _ in results if status != 200)
    flipped = [seconds for status, seconds, *_ in results if status == 200]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({
        "bytes_sent": len(body), "seconds": round(time.monotonic() - started, 2), "late_s": round(late_s, 2),
        "statuses": {str(k): v for k, v in statuses.items()}, "flips": len(flipped),
        "mean_flip_s": round(sum(flipped) / len(flipped), 3) if flipped else None,
        "refusals": dict(refusals.most_common(5)),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
