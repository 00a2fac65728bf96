"""Stopping, scaling down and replacing replicas while 8 locust users post flips: a replica told
to stop finishes what it holds, so only a replacement of every replica at once may refuse
requests, and then only with the JSON 503."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest
import requests

from harness.compose import ROOT, run
from harness.locust import LocustRun, under_load

pytestmark = [pytest.mark.docker, pytest.mark.slow]
USERS = 8
# Load before the change, the change itself, and load after it: LOAD_SECONDS at most.
LOAD_SECONDS = 45
CHANGE_AT = 5


def changing(flipfleet, tmp_path):
    """The load a change runs under: the block is the change."""
    return under_load(flipfleet.url, tmp_path, LOAD_SECONDS, users=USERS, start_after=CHANGE_AT)


def assert_no_failures(run: LocustRun) -> dict:
    flips = run.figures("/flip")
    assert flips["requests"] > 0 and flips["failures"] == 0, run.errors()
    return flips


def versions_answering(flipfleet, count: int = 12) -> set[str]:
    return {requests.get(flipfleet.url + "/", timeout=10).headers["X-Flipfleet-Version"] for _ in range(count)}


def test_the_rolling_replacement_fails_no_request(stack, tmp_path):
    flipfleet = stack(3)
    before = set(flipfleet.container_ids())
    assert versions_answering(flipfleet) == {"dev"}
    try:
        with changing(flipfleet, tmp_path) as finished:
            started = time.monotonic()
            run(["bash", "scripts/rollout.sh", *flipfleet.compose_options()], timeout=600,
                env={**flipfleet.env, "FLIP_VERSION": "rolled"})
            took = time.monotonic() - started
            assert took < LOAD_SECONDS - CHANGE_AT, "the rollout outlasted the load"
        flips = assert_no_failures(finished[0])
        after = set(flipfleet.container_ids())
        assert len(after) == 3 and not after & before  # every replica replaced
        assert versions_answering(flipfleet) == {"rolled"}
    finally:
        subprocess.run(["docker", "image", "rm", "flipfleet-web:rolled"], cwd=ROOT, capture_output=True, timeout=60)
    print(f"scripts/rollout.sh replaced 3 replicas in {took:.1f} s under {USERS} users: {flips['requests']} flips, "
          f"0 failed, p95 {flips['p95_ms']:.0f} ms")


def test_scaling_down_from_3_to_1_fails_no_request(stack, tmp_path):
    flipfleet = stack(3)
    with changing(flipfleet, tmp_path) as finished:
        flipfleet.compose("up", "-d", "--no-build", "--no-deps", "--scale", "web=1", "web", timeout=120)
    flips = assert_no_failures(finished[0])
    assert len(flipfleet.container_ids()) == 1
    print(f"scaled 3 -> 1 under {USERS} users: {flips['requests']} flips, 0 failed")


def test_stopping_one_replica_fails_no_request(stack, tmp_path):
    flipfleet = stack(3)
    victim = flipfleet.container_ids()[0]
    with changing(flipfleet, tmp_path) as finished:
        # What `docker compose stop` does to each container: the stop signal, then the grace period.
        run(["docker", "stop", victim], timeout=60)
    flips = assert_no_failures(finished[0])
    assert flipfleet.inspect(victim, "{{.State.Running}}") == "false"
    assert "draining" in run(["docker", "logs", victim]).stdout
    print(f"one of 3 replicas stopped under {USERS} users: {flips['requests']} flips, 0 failed")


def test_restarting_every_replica_at_once_refuses_only_with_json_503(stack, tmp_path):
    flipfleet = stack(3)
    started_at = {c: flipfleet.inspect(c, "{{.State.StartedAt}}") for c in flipfleet.container_ids()}
    refused_at: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        # When GET / was refused, to a tenth of a second (within nginx's rate for requests
        # without a body): how long the stack was away.
        while not stop.wait(0.1):
            try:
                if requests.get(flipfleet.url + "/", timeout=5).status_code != 200:
                    refused_at.append(time.monotonic())
            except requests.RequestException:
                refused_at.append(time.monotonic())

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with changing(flipfleet, tmp_path) as finished:
            started = time.monotonic()
            flipfleet.compose("restart", "web", timeout=120)
            assert time.monotonic() - started < LOAD_SECONDS - CHANGE_AT, "the restart outlasted the load"
    finally:
        stop.set()
        prober.join(timeout=30)
    run_ = finished[0]
    flips = run_.figures("/flip")
    errors = run_.errors("/flip")
    # Every failure is nginx's JSON 503 with Retry-After (locust's message quotes both).
    json_503 = re.compile(r'status 503, not 200 \(Retry-After: 1\): \{"error":"[^"]*","status":503\}')
    assert all(json_503.search(error) for error in errors), errors
    assert flips["failures"] == sum(errors.values())
    # Every replica was restarted, and while none was up clients were refused, for a while.
    assert all(flipfleet.inspect(c, "{{.State.StartedAt}}") != at for c, at in started_at.items()), started_at
    assert refused_at and flips["failures"] > 0, (refused_at, flips)
    away = refused_at[-1] - refused_at[0]
    assert away < 30, away
    print(f"`docker compose restart web` (3 replicas) under {USERS} users: {flips['requests']} flips, "
          f"{flips['failures']} refused with the JSON 503 and Retry-After, none cut; GET / refused for "
          f"{away:.1f} s ({len(refused_at)} probes)")
