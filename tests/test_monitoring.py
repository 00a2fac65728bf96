"""Metrics on the real stack: Prometheus (compose's profile monitoring) follows the replicas as
they are scaled and scrapes nginx through its exporter; light requests and /metrics stay quick
while every flip queue is full."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from harness import wait_for
from harness.compose import ROOT, offline_image, run
from harness.locust import run_locust
from loadtest.bench.latency import probe
from service.config import Settings
from service.sample import load_sample

pytestmark = pytest.mark.docker
DIRECT = ROOT / "loadtest" / "compose.direct.yaml"


class Prometheus:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expression: str) -> list[dict]:
        answer = requests.get(self.url + "/api/v1/query", params={"query": expression}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def scalar(self, expression: str) -> float:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else 0.0

    def web_targets_up(self) -> int:
        targets = requests.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return sum(1 for t in targets if t["labels"]["job"] == "web" and t["health"] == "up")


@pytest.fixture
def monitored(stack):
    """A stack of 2 replicas with Prometheus and the nginx exporter, and its Prometheus."""
    flipfleet = stack(2, COMPOSE_PROFILES="monitoring", PROMETHEUS_PORT="")
    prometheus = Prometheus(flipfleet.published_port("prometheus", 9090))
    assert wait_for(lambda: prometheus.web_targets_up() == 2, timeout=30)
    return flipfleet, prometheus


def test_prometheus_follows_the_replicas_as_they_are_scaled(monitored):
    flipfleet, prometheus = monitored
    for replicas in (3, 2):
        flipfleet.compose("up", "-d", "--no-build", "--no-deps", "--scale", f"web={replicas}", "web", timeout=180)
        scaled_at = time.monotonic()
        assert wait_for(lambda replicas=replicas: prometheus.web_targets_up() == replicas, timeout=20, interval=0.5), \
            prometheus.web_targets_up()
        print(f"--scale web={replicas}: Prometheus had {replicas} web targets up "
              f"{time.monotonic() - scaled_at:.1f} s after compose returned")
    assert wait_for(lambda: prometheus.scalar("flipfleet:replicas_up") == 2, timeout=20)


def test_the_exporter_counts_what_nginx_serves_and_the_rules_are_loaded(monitored):
    flipfleet, prometheus = monitored
    assert wait_for(lambda: prometheus.scalar('up{job="nginx"}') == 1, timeout=30)
    before = prometheus.scalar("nginx_http_requests_total")
    for _ in range(25):
        assert requests.get(flipfleet.url + "/", timeout=10).ok
    assert wait_for(lambda: prometheus.scalar("nginx_http_requests_total") >= before + 25, timeout=20)
    assert requests.post(flipfleet.url + "/flip", timeout=60).ok
    assert wait_for(lambda: prometheus.scalar('sum(flipfleet_requests_total{route="/flip", status="200"})') == 1,
                    timeout=20)
    rules = requests.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"flipfleet:flips:rate1m", "flipfleet:flip_duration_seconds:p95", "flipfleet:refusals_503:rate1m",
            "flipfleet:replicas_up", "FlipfleetReplicaDown", "FlipfleetNginxDown", "FlipfleetShedding",
            "FlipfleetSlowFlips"} <= names
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"])


@pytest.mark.slow
def test_light_requests_and_metrics_stay_quick_while_every_queue_is_full(stack, tmp_path):
    # One address stands in for every client here: no per-client share.
    users = 2 * Settings.from_env({}).queue  # 2 replicas x FLIP_QUEUE: every place in every queue taken
    flipfleet = stack(2, DIRECT, FLIP_CLIENT_SHARE=str(users))
    replica = flipfleet.published_port("web", 8000)
    photo = tmp_path / "sample.jpg"
    photo.write_bytes(load_sample(None))
    done = threading.Event()
    runs = []

    def load() -> None:
        try:
            runs.append(run_locust(flipfleet.url, "FlipUser", users=users, seconds=25, csv_prefix=tmp_path / "run",
                                   FLIP_PHOTO=str(photo)))
        finally:
            done.set()

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(5)  # every user has a flip in
    found = probe({"GET /healthz (a replica)": (replica, "/healthz"), "GET /metrics (a replica)": (replica, "/metrics"),
                   "GET / (through nginx)": (flipfleet.port, "/")}, until=done.is_set)
    loader.join()
    flips = runs[0].figures("/flip")
    print(f"{users} users flipping ({flips['rps']:.2f} flips/s, {flips['failures']} failed); " + "; ".join(
        f"{name}: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms ({p['count']} probes)"
        for name, p in found.items()))
    for name, figures in found.items():
        assert figures["failed"] == 0, name
        # Loose: the healthcheck's timeout is 3 s; the benchmark measures it tightly.
        assert figures["p99_ms"] < 1500, (name, figures)


def test_the_rules_pass_their_unit_tests(docker_images):
    """monitoring/rules.test.yml: each alert fires when it should and not before (promtool)."""
    image = offline_image("PROMETHEUS_IMAGE", "prom/prometheus:v2.53.3")
    done = run(["docker", "run", "--rm", "-v", f"{ROOT / 'monitoring'}:/etc/prometheus:ro", "--entrypoint", "promtool",
                image, "test", "rules", "/etc/prometheus/rules.test.yml"], check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.slow
def test_a_replica_that_stops_answering_fires_its_alert(monitored):
    flipfleet, prometheus = monitored
    victim = flipfleet.container_ids()[0]
    run(["docker", "pause", victim])
    paused_at = time.monotonic()
    try:
        def firing() -> list[dict]:
            alerts = requests.get(prometheus.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "FlipfleetReplicaDown" and a["state"] == "firing"]

        fired = wait_for(firing, timeout=120, interval=2)
    finally:
        run(["docker", "unpause", victim])
    assert fired and len(fired) == 1, fired
    print(f"a paused replica: FlipfleetReplicaDown firing {time.monotonic() - paused_at:.0f} s later "
          f"({fired[0]['labels']['instance']})")
