"""End to end: the compose stack (nginx + N waitress replicas) on a real Docker engine."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time

import pytest
import requests
from PIL import Image

from harness import wait_for
from harness.compose import run
from service.config import Settings
from tests.pictures import decode, encode, picture

pytestmark = pytest.mark.docker
DOWN = Image.Transpose.FLIP_TOP_BOTTOM


@pytest.mark.smoke
def test_requests_spread_over_every_replica_and_flips_are_right(stack):
    flipfleet = stack(3)

    names = flipfleet.replica_names(30)
    assert len(set(names)) == 3, names

    png = encode(picture("RGB"), "PNG")
    response = requests.post(
        flipfleet.url + "/flip", data=png, headers={"Content-Type": "image/png", "X-Request-ID": "e2e-rid-1"},
        timeout=30,
    )
    assert response.status_code == 200
    assert decode(response.content).tobytes() == picture("RGB").transpose(DOWN).tobytes()
    assert response.headers["X-Request-ID"] == "e2e-rid-1"
    assert "X-Upstream" not in response.headers  # no internal address reaches a client
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Server"] == "nginx"  # no version
    assert "rid=e2e-rid-1 POST /flip 200" in flipfleet.logs("web")
    (logged,) = [entry for entry in flipfleet.nginx_requests() if entry["rid"] == "e2e-rid-1"]
    assert logged["upstreams"][0].endswith(":8000")  # but the access log names the replica


def test_a_killed_replica_is_restarted_and_serves_again(stack):
    flipfleet = stack(2)
    victim = flipfleet.container_ids()[0]
    name = victim[:12]  # the replica's hostname, which it answers with
    assert flipfleet.restart_count(victim) == 0

    flipfleet.kill_process(victim)

    assert wait_for(lambda: flipfleet.restart_count(victim) >= 1, timeout=30)
    assert wait_for(lambda: flipfleet.health(victim) == "healthy", timeout=60)
    assert wait_for(lambda: name in flipfleet.replica_names(6), timeout=20)


def test_scaling_up_needs_no_nginx_restart(stack):
    flipfleet = stack(3)
    nginx = flipfleet.container_ids("nginx")[0]
    started_at = flipfleet.inspect(nginx, "{{.State.StartedAt}}")

    asked_at = time.monotonic()
    flipfleet.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "web=5", timeout=180)
    scaled_at = time.monotonic()
    seen: set[str] = set()

    def all_five_answer() -> bool:
        seen.update(flipfleet.replica_names(5))
        return len(seen) == 5

    assert wait_for(all_five_answer, timeout=10), seen
    print(f"all 5 replicas answered {time.monotonic() - scaled_at:.1f} s after `up --scale` returned "
          f"({time.monotonic() - asked_at:.1f} s after it was started; it waits for health)")

    # nginx follows the count too: it admits for 5 replicas now (as many as its memory limit
    # holds), after a reload, not a restart.
    assert wait_for(lambda: "upstream web:8000 (5 replicas)" in flipfleet.logs("nginx"), timeout=20), \
        flipfleet.logs("nginx")[-2000:]
    assert flipfleet.container_ids("nginx") == [nginx]
    assert flipfleet.inspect(nginx, "{{.State.StartedAt}}") == started_at
    assert flipfleet.restart_count(nginx) == 0


def test_the_body_limit_is_the_one_set_for_the_stack(stack):
    # FLIP_MAX_BYTES set once reaches both nginx and the replicas; nginx's memory limit is cut
    # down so that its entrypoint must admit fewer bodies than the replicas could hold.
    flipfleet = stack(1, FLIP_MAX_BYTES="2000000", NGINX_MEMORY_LIMIT="200m")
    admitted = int(re.search(r"admitting (\d+) bodies of up to 2000000 bytes", flipfleet.logs("nginx")).group(1))
    assert 1 <= admitted < 8, flipfleet.logs("nginx")  # 8: what one replica holds (FLIP_QUEUE)

    too_big = requests.post(flipfleet.url + "/flip", data=b"\0" * 2_000_001, headers={"Content-Type": "image/jpeg"},
                            timeout=60)
    assert too_big.status_code == 413
    assert too_big.json() == {"error": "the body is over the limit of 2,000,000 bytes", "status": 413}
    assert "X-Served-By" not in too_big.headers  # nginx refused it; no replica saw it
    just_fits = requests.post(flipfleet.url + "/flip", data=b"\0" * 2_000_000, headers={"Content-Type": "image/jpeg"},
                              timeout=60)
    assert just_fits.status_code == 400 and "X-Served-By" in just_fits.headers  # the replica read it

    corrupt = encode(picture("RGB"), "PNG")[:200]
    bad = requests.post(flipfleet.url + "/flip", data=corrupt, headers={"Content-Type": "image/png"}, timeout=30)
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == "application/json"
    assert "damaged" in bad.json()["error"]
    assert "X-Served-By" in bad.headers  # the service's own answer, passed through

    assert requests.get(flipfleet.url + "/nginx-health", timeout=5).json() == {"status": "ok"}


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes that no HTTP library would; the status, headers and body of nginx's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.headers), response.read()


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"NONSENSE\r\n\r\n", 400, "bad request"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "the URL is too long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 400, "bad request"),
        (b"POST /flip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
         "that transfer encoding is not supported"),
        (b"GET / HTTP/2.7\r\nHost: x\r\n\r\n", 505, "that HTTP version is not supported"),
        (b"POST /flip HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413,
         f"the body is over the limit of {Settings.from_env({}).max_bytes:,} bytes"),
    ],
    ids=["bad-request-line", "long-url", "large-header", "unknown-encoding", "http-version", "huge-length"],
)
def test_nginx_own_errors_are_json_with_the_security_headers(running_stack, request_bytes, status, error):
    answered, headers, body = raw_request(running_stack.port, request_bytes)
    assert answered == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": error, "status": status}
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Server"] == "nginx"


@pytest.mark.slow
def test_locust_web_ui_drives_the_stack(stack):
    flipfleet = stack(2, COMPOSE_PROFILES="loadtest", LOCUST_PORT="", LOCUST_WORKERS="2")
    ui = f"http://127.0.0.1:{flipfleet.published_port('locust-master', 8089)}"
    assert "locust" in requests.get(ui + "/", timeout=10).text.lower()
    assert wait_for(lambda: requests.get(ui + "/stats/requests", timeout=10).json().get("worker_count") == 2,
                    timeout=30)

    started = requests.post(ui + "/swarm", data={"user_count": 2, "spawn_rate": 2}, timeout=10)
    assert started.json()["success"], started.text
    try:
        def flips_done() -> int:
            stats = requests.get(ui + "/stats/requests", timeout=10).json()["stats"]
            return sum(row["num_requests"] for row in stats if row["name"] == "/flip")

        assert wait_for(lambda: flips_done() >= 5, timeout=60)
    finally:
        requests.get(ui + "/stop", timeout=10)
    stats = requests.get(ui + "/stats/requests", timeout=10).json()
    assert stats["errors"] == []
    assert all(row["num_failures"] == 0 for row in stats["stats"]), stats["stats"]
    assert "POST /flip" in flipfleet.logs("web")


@pytest.mark.smoke
def test_replica_metrics_are_not_served_to_clients(running_stack):
    response = requests.get(running_stack.url + "/metrics", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "not found", "status": 404}
    assert "X-Served-By" not in response.headers  # nginx answered; no replica was asked
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# Established TCP connections to the replica's port 8000 from other hosts, read from its own /proc.
CONNECTIONS_FROM_OUTSIDE = """
count = 0
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, remote, state = line.split()[1:4]
    count += local.endswith(":1F40") and state == "01" and not remote.startswith("0100007F")
print(count)
"""


def test_every_flip_reaches_its_replica_on_a_new_connection(running_stack):
    # A connection nginx kept after a flip could carry the next one just as its replica, stopping,
    # closes it as idle: that flip would spend there the one resend kept for a replica that dies under it.
    replica = running_stack.container_ids()[0]

    def connections_from_outside() -> int:
        return int(run(["docker", "exec", replica, "python", "-c", CONNECTIONS_FROM_OUTSIDE]).stdout)

    kept = connections_from_outside()  # nginx's kept connections for light requests, if any
    png = encode(picture("RGB"), "PNG")
    for _ in range(3):
        response = requests.post(running_stack.url + "/flip", data=png, headers={"Content-Type": "image/png"},
                                 timeout=30)
        assert response.status_code == 200, response.text
    assert connections_from_outside() == kept
