"""Latency of light requests: GET / through nginx against straight to a replica, and the
light routes probed while every replica's flip queue is full."""

from __future__ import annotations

import http.client
import statistics
import time

from harness.compose import Stack

# Between two GET /: under nginx's rate for requests without a body (20 a second per client).
PACE_SECONDS = 0.06


def get_latencies(host: str, port: int, count: int) -> list[float]:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    latencies = []
    for _ in range(count):
        time.sleep(PACE_SECONDS)
        started = time.perf_counter()
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"GET / answered {response.status}")
    connection.close()
    return latencies


def nginx_overhead(stack: Stack, rounds: int, per_round: int = 50) -> dict:
    """Median GET / latency through nginx and straight to the one replica, interleaved."""
    direct_port = stack.published_port("web", 8000)
    through, straight = [], []
    for _ in range(rounds):
        through += get_latencies("127.0.0.1", stack.port, per_round)
        straight += get_latencies("127.0.0.1", direct_port, per_round)
    return {
        "requests_each": len(through),
        "through_nginx_p50_ms": round(statistics.median(through), 3),
        "direct_p50_ms": round(statistics.median(straight), 3),
        "nginx_adds_p50_ms": round(statistics.median(through) - statistics.median(straight), 3),
        "through_nginx_p95_ms": round(statistics.quantiles(through, n=20)[-1], 3),
        "direct_p95_ms": round(statistics.quantiles(straight, n=20)[-1], 3),
    }


def percentiles(latencies_ms: list[float]) -> dict:
    ordered = sorted(latencies_ms)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"count": len(ordered), "p50_ms": round(cut[49], 2), "p95_ms": round(cut[94], 2),
            "p99_ms": round(cut[98], 2), "max_ms": round(ordered[-1], 2)}


def probe(targets: dict[str, tuple[int, str]], until, interval: float = 0.25) -> dict:
    """GET each target (name -> (port, path) on 127.0.0.1) every `interval` s until `until()`;
    its latency percentiles. A probe that gets no 200 is counted as failed, its time kept."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    failed = dict.fromkeys(targets, 0)
    while not until():
        for name, (port, path) in targets.items():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                failed[name] += response.status != 200
            except OSError:
                failed[name] += 1
            finally:
                connection.close()
            times[name].append((time.perf_counter() - started) * 1000)
        time.sleep(interval)
    return {name: {**percentiles(times[name]), "failed": failed[name]} for name in targets if times[name]}
