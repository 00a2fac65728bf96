"""End to end: the compose stack (nginx + N waitress replicas) on a real Docker engine."""

from __future__ import annotations

import io
import threading
import time

import pytest
import requests
from PIL import Image

from loadtest.local import wait_for
from loadtest.stack import free_port
from service.sample import load_sample
from tests.pictures import decode, encode, picture

pytestmark = pytest.mark.docker
DOWN = Image.Transpose.FLIP_TOP_BOTTOM


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
    assert response.headers["X-Upstream"].endswith(":8000")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Server"] == "nginx"  # no version
    assert "rid=e2e-rid-1 POST /flip 200" in flipfleet.logs("web")
    nginx_log = flipfleet.logs("nginx")
    assert "rid=e2e-rid-1" in nginx_log and f"upstream={response.headers['X-Upstream']}" in nginx_log


def test_a_killed_replica_is_restarted_and_serves_again(stack):
    flipfleet = stack(2)
    victim = flipfleet.container_ids()[0]
    name = victim[:12]  # the replica's hostname, which it answers with
    assert flipfleet.restart_count(victim) == 0

    flipfleet.kill_process(victim)

    assert wait_for(lambda: flipfleet.restart_count(victim) >= 1, timeout=30)
    assert wait_for(lambda: flipfleet.health(victim) == "healthy", timeout=60)
    assert wait_for(lambda: name in flipfleet.replica_names(6), timeout=20)


def test_no_request_fails_while_a_replica_is_killed_under_load(stack):
    flipfleet = stack(3)
    photo = load_sample(None)
    deadline = time.monotonic() + 20
    outcomes: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                try:
                    response = session.post(
                        flipfleet.url + "/flip", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60
                    )
                    ok = response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (6000, 4000)
                    outcomes.append("ok" if ok else f"{response.status_code} {response.text[:200]}")
                except requests.RequestException as exc:
                    outcomes.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(7)
    victim = flipfleet.container_ids()[1]
    done_before_kill = len(outcomes)
    flipfleet.kill_process(victim)
    for thread in clients:
        thread.join(timeout=90)

    failures = [outcome for outcome in outcomes if outcome != "ok"]
    # Only an answer the kill cut mid-transfer may fail (nginx had passed its headers on and
    # cannot retry it; see the README's Reliability section): at most one, for the one kill.
    cut = [failure for failure in failures if "IncompleteRead" in failure]
    assert failures == cut and len(cut) <= 1, failures
    assert len(outcomes) > done_before_kill > 0
    assert flipfleet.restart_count(victim) >= 1
    print(f"{len(outcomes)} flips in 20 s, {done_before_kill} before the kill, {len(failures)} failed "
          f"({len(cut)} answers cut mid-transfer)")


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

    assert flipfleet.container_ids("nginx") == [nginx]
    assert flipfleet.inspect(nginx, "{{.State.StartedAt}}") == started_at
    assert flipfleet.restart_count(nginx) == 0


def test_limits_and_bad_pictures_answer_json_through_nginx(stack):
    flipfleet = stack(1)

    too_big = requests.post(
        flipfleet.url + "/flip", data=b"\0" * (25 * 1024 * 1024 + 1), headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert too_big.status_code == 413
    assert too_big.headers["Content-Type"] == "application/json"
    assert "limit" in too_big.json()["error"]
    assert "X-Served-By" not in too_big.headers  # nginx refused it; no replica saw it

    corrupt = encode(picture("RGB"), "PNG")[:200]
    bad = requests.post(flipfleet.url + "/flip", data=corrupt, headers={"Content-Type": "image/png"}, timeout=30)
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == "application/json"
    assert "damaged" in bad.json()["error"]
    assert "X-Served-By" in bad.headers  # the service's own answer, passed through

    assert requests.get(flipfleet.url + "/nginx-health", timeout=5).json() == {"status": "ok"}


def test_locust_web_ui_drives_the_stack(stack):
    locust_port = free_port()
    flipfleet = stack(2, COMPOSE_PROFILES="loadtest", LOCUST_PORT=str(locust_port), LOCUST_WORKERS="2")
    ui = f"http://127.0.0.1:{locust_port}"
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
