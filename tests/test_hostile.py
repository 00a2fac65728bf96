"""Hostile traffic, end to end through nginx on a real Docker engine: one client against the others,
cheap requests in a loop, and what a client may learn of the inside. Clients that must be told
apart run as containers on the stack's network, each with an address of its own (through the
published port every host client is the bridge's gateway)."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import socket
import threading
import time

import pytest
import requests

from harness import client, usage, wait_for
from service.config import Settings
from service.sample import make_sample
from tests.crafted_jpeg import many_scans_jpeg

pytestmark = pytest.mark.docker
POLITE = {"connections": 1, "size": "1600x1200"}
GREEDY = {"connections": 40, "size": "1600x1200", "impatient": False}
# A greedy client as an attacker runs it: a refusal retried 50 ms later whatever Retry-After says,
# on half a core, so that on this machine it cannot win by taking the stack's own CPU.
IMPATIENT = {**GREEDY, "impatient": True, "cpus": 0.5}
# Healthchecks on stacks whose CPU a test compares: each check is a `docker exec` (~0.2 CPU-s).
MEASURED_HEALTH_INTERVAL = "5s"


@pytest.mark.slow
def test_a_greedy_client_does_not_starve_a_polite_one(stack):
    # A replica per core, checked for health less often than on other test stacks: a check costs
    # CPU that this test measures.
    flipfleet = stack(os.cpu_count() or 2, HEALTH_INTERVAL=MEASURED_HEALTH_INTERVAL)
    share = Settings.from_env({}).client_share
    (nginx,) = flipfleet.container_ids("nginx")
    per_refusal = nginx_seconds_per_refusal(flipfleet, nginx, make_sample(1600, 1200))
    (alone,) = flipfleet.flip_clients(POLITE, seconds=15)
    assert alone["statuses"] == {"200": alone["flips"]} and alone["flips"] > 0
    # Beside the one that retries at once, 22 to 30 % while nginx answered its every refusal at once
    # (it read each body): hence a higher floor for that one.
    for greedy_kind, floor in ((GREEDY, 1 / 3), (IMPATIENT, 2 / 5)):
        nginx_before = _cpu_seconds(nginx)
        polite, greedy = flipfleet.flip_clients(POLITE, greedy_kind, seconds=15)
        nginx_seconds = _cpu_seconds(nginx) - nginx_before
        refused = {status: count for status, count in greedy["statuses"].items() if status != "200"}
        print(f"a polite client (1 connection) alone: {alone['flips']} flips of a 1600x1200 JPEG in 15 s; beside a "
              f"greedy one ({greedy_kind}): {polite['flips']} ({polite['flips'] / alone['flips']:.0%}), statuses "
              f"{polite['statuses']}; the greedy one: {greedy['statuses']} in {greedy['cpu_s']} CPU-s "
              f"({greedy['statuses'].get('200', 0) / share:.0f} flips a place of its share); nginx "
              f"{nginx_seconds:.2f} CPU-s, of which its refusals about {sum(refused.values()) * per_refusal:.2f} "
              f"({per_refusal * 1000:.2f} ms each); e.g. {list(greedy['refusals'])[:1]}")
        assert polite["statuses"] == {"200": polite["flips"]}, polite["refusals"]  # never refused
        # Fair turns: the polite client's one connection flips more often than each flip the greedy
        # one holds in flight (its share); with first-come turns and no express lane each got about
        # as many.
        assert polite["flips"] >= 2 * greedy["statuses"]["200"] / share
        # Not starved: first-come turns left it 16 % of what it flips alone, fair turns about half
        # (docs/reliability.md).
        assert polite["flips"] >= alone["flips"] * floor
        assert greedy["statuses"]["200"] > polite["flips"]  # the rest of the fleet is the greedy client's
        # Refused with the JSON 503; one that retries at once is also closed unread once it has
        # REFUSALS_HELD refusals waiting (status 0 here: the connection reset).
        assert set(refused) <= ({"503", "429", "0"} if greedy_kind["impatient"] else {"503", "429"}), refused
        assert refused.get("503"), greedy["statuses"]
        for refusal in greedy["refusals"]:
            if refusal.startswith("0 "):
                assert "ConnectionResetError" in refusal or "BrokenPipeError" in refusal, refusal
                continue
            assert "(Retry-After: 1)" in refusal, refusal
            body = json.loads(refusal.split(" ", 1)[1].rsplit(" (Retry-After", 1)[0])
            assert f"its share of {share} at once" in body["error"] or "flips in this replica" in body["error"], body


REFUSALS_MEASURED = 50  # within the refusals nginx answers at once (REFUSALS_AT_ONCE)


def nginx_seconds_per_refusal(flipfleet, nginx: str, body: bytes) -> float:
    """nginx's CPU seconds for one refusal of `body` (its JSON 503, and reading the body to throw
    it away), measured alone: the host's share held by stalled uploads, then refusals in turn."""
    share = Settings.from_env({}).client_share
    held = [_stalled_upload(flipfleet.port) for _ in range(share)]
    try:
        time.sleep(0.5)
        before = _cpu_seconds(nginx)
        statuses = [requests.post(flipfleet.url + "/flip", data=body, headers={"Content-Type": "image/jpeg"},
                                  timeout=10).status_code for _ in range(REFUSALS_MEASURED)]
        seconds = (_cpu_seconds(nginx) - before) / REFUSALS_MEASURED
    finally:
        for sock in held:
            sock.close()
    assert statuses == [503] * REFUSALS_MEASURED, collections.Counter(statuses)
    return seconds


def _cpu_seconds(container: str) -> float:
    """A container's CPU seconds so far, from its cgroup."""
    seconds = usage.container_seconds(container)
    assert seconds is not None, f"no cgroup CPU counter (v1 cpuacct or v2 cpu.stat) for container {container[:12]}"
    return seconds


def rested(url: str) -> str:
    """`url`, once this client's allowance of requests without a body has filled up again."""
    time.sleep(BODYLESS_REFILL_SECONDS)
    return url


# nginx's bodyless zone: burst 40 at 20 a second.
BODYLESS_REFILL_SECONDS = 2.5


def test_a_loop_of_cheap_requests_is_held_to_a_rate_and_answered_at_once(running_stack):
    url = rested(running_stack.url)
    started = time.monotonic()
    answers = [requests.get(url + "/", timeout=10) for _ in range(200)]
    took = time.monotonic() - started
    by_status = collections.Counter(answer.status_code for answer in answers)
    print(f"200 GET / in a loop from one client, {took:.2f} s: {dict(by_status)}")
    # The burst, then the rate: at most 40 + 20 a second got through.
    assert set(by_status) == {200, 429} and 40 <= by_status[200] <= 40 + 20 * took + 1, by_status
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json() == {"error": "too many requests from this client; retry after 1 s", "status": 429}
    assert refused.headers["Retry-After"] == "1" and "X-Served-By" not in refused.headers


@pytest.mark.smoke
def test_clients_learn_no_internal_address_and_no_replica_health(running_stack):
    answer = requests.get(rested(running_stack.url) + "/", timeout=10)
    assert answer.status_code == 200 and answer.text.startswith("flipfleet replica")  # which replica answered
    assert "X-Upstream" not in answer.headers
    health = requests.get(running_stack.url + "/healthz", timeout=10)
    assert health.status_code == 404 and health.json() == {"error": "not found", "status": 404}
    assert "X-Served-By" not in health.headers  # nginx answered; no replica was asked


# nginx's refusals of one client (nginx.conf.template, zone "refusals"): answered at once up to
# this many, then held and answered this many a second, up to this many held; the rest closed.
REFUSALS_AT_ONCE, REFUSALS_A_SECOND, REFUSALS_HELD = 100, 10, 40
STALLED = 200  # small uploads (under 1 MB) from one client: past its share, more than those refusals


def _stalled_upload(port: int) -> socket.socket:
    """A connection that sent the headers of a 500 kB flip and its first byte, and nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /flip HTTP/1.1\r\nHost: flipfleet\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 500000\r\n\r\n" + b"\xff")
    return sock


def test_one_client_stalled_uploads_hold_its_share_only_and_are_cut_after_the_timeout(stack):
    flipfleet = stack(2)
    share = Settings.from_env({}).client_share
    stalled = [_stalled_upload(flipfleet.port) for _ in range(share)]
    closed_at: dict[int, float] = {}
    refused: dict[int, tuple[float, str]] = {}  # (seconds after the last byte, what came)
    others: list[dict] = []
    try:
        time.sleep(0.5)
        assert all(_state(sock) == "open" for sock in stalled)  # its share, waiting for bodies
        # A client that asks first (Expect: 100-continue, as curl does past 1 MB) is refused before
        # it sends its body: the refusal costs neither side the body.
        with socket.create_connection(("127.0.0.1", flipfleet.port), timeout=5) as asking:
            asking.sendall(b"POST /flip HTTP/1.1\r\nHost: flipfleet\r\nContent-Type: image/jpeg\r\n"
                           b"Content-Length: 500000\r\nExpect: 100-continue\r\n\r\n")
            answer = asking.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer[:200]
        stalled += [_stalled_upload(flipfleet.port) for _ in range(STALLED - share)]
        last_byte_at = time.monotonic()

        # Past its share every one is refused: the first at once, the next ones held and answered in
        # turn, the rest closed unread; the share stays open, waiting for its bodies.
        def refusals_settled() -> bool:
            for i in range(share, STALLED):
                if i not in refused and (state := _state(stalled[i])) != "open":
                    refused[i] = (time.monotonic() - last_byte_at, state)
            return len(refused) == STALLED - share

        assert wait_for(refusals_settled, timeout=8, interval=0.05), f"{len(refused)} of {STALLED - share} answered"
        assert all(_state(sock) == "open" for sock in stalled[:share])
        answered = sorted(seconds for seconds, state in refused.values() if state.startswith("HTTP/1.1 503"))
        unanswered = [seconds for seconds, state in refused.values() if state == "closed"]
        what_came = collections.Counter(state[:12] for _, state in refused.values())
        assert len(answered) + len(unanswered) == STALLED - share, what_came
        assert sum(seconds < 0.5 for seconds in answered) >= REFUSALS_AT_ONCE  # at once
        # Held ones in turn, REFUSALS_A_SECOND a second
        assert len(answered) >= REFUSALS_AT_ONCE + REFUSALS_HELD, answered
        assert answered[-1] >= 0.75 * REFUSALS_HELD / REFUSALS_A_SECOND, answered
        assert unanswered and max(unanswered) < 0.5, unanswered  # past those held: closed at once
        # Another client flips meanwhile, from an address of its own.
        other = threading.Thread(target=lambda: others.extend(
            flipfleet.flip_clients({"connections": 1, "size": "640x480"}, seconds=3, start_in=3)))
        other.start()

        # nginx's client_body_timeout (10 s) cuts a body that stops arriving, and not before.
        def all_cut() -> bool:
            for i in range(share):
                if i not in closed_at and _state(stalled[i]) != "open":
                    closed_at[i] = time.monotonic() - last_byte_at
            return len(closed_at) == share

        assert wait_for(all_cut, timeout=30, interval=0.2)
        other.join(timeout=120)
    finally:
        for sock in stalled:
            sock.close()
    (flips,) = others
    assert flips["statuses"] == {"200": flips["flips"]} and flips["flips"] > 0, flips
    assert 9 <= min(closed_at.values()) and max(closed_at.values()) <= 20, sorted(closed_at.values())
    print(f"{STALLED} stalled uploads from one client: {share} held (its share); of the {STALLED - share} refused "
          f"{sum(seconds < 0.5 for seconds in answered)} got the JSON 503 at once, {len(answered)} in all (the last "
          f"after {answered[-1]:.1f} s), {len(unanswered)} were closed unread; another client flipped "
          f"{flips['flips']} times meanwhile, none refused; nginx cut the held ones "
          f"{min(closed_at.values()):.1f}-{max(closed_at.values()):.1f} s after their last byte")


def _state(sock: socket.socket) -> str:
    """"open" (nothing to read yet), "closed" (by the peer), or the first bytes of an answer."""
    sock.settimeout(0.001)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "open"
    except OSError:
        return "closed"
    return "closed" if data == b"" or data.startswith(b"HTTP/1.1 408") else data[:60].decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "refusal"),
    [({}, "more than 100 scans"),
     # The scan count lifted: the deadline must end the decoding instead.
     ({"FLIP_MAX_SCANS": "1000000", "FLIP_MAX_SECONDS": "3"}, "took longer than 3 s")],
    ids=["scan-limit", "deadline"],
)
def test_poisonous_jpegs_get_a_json_422_and_the_other_clients_keep_their_flips(stack, env, refusal):
    flipfleet = stack(os.cpu_count() or 2, HEALTH_INTERVAL=MEASURED_HEALTH_INTERVAL, **env)
    replicas = flipfleet.container_ids()
    poison = many_scans_jpeg((8000, 6000), scans=20_000)  # 48 MP, 1.9 MB, about 80 s of decoding
    deadline = int(env.get("FLIP_MAX_SECONDS", Settings.from_env({}).max_seconds))
    normal = {"connections": 8, "size": "3000x2000"}
    (alone,) = flipfleet.flip_clients(normal, seconds=20)
    runs, poisoned = [], []

    def send_poisons() -> None:
        time.sleep(8)  # while the normal clients are flipping
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            poisoned.extend(pool.map(lambda n: client.post(flipfleet.url + "/flip", poison, {
                "Content-Type": "image/jpeg", "X-Request-ID": f"poison-{n}"}, timeout=120), range(3)))

    sender = threading.Thread(target=send_poisons)
    sender.start()
    runs.extend(flipfleet.flip_clients(normal, seconds=20, start_in=5))
    sender.join(timeout=180)
    (beside,) = runs
    kept = beside["flips"] / alone["flips"]
    slowest = max(answer.seconds for answer in poisoned)
    print(f"{'scan limit' if not env else 'deadline'}: 3 JPEGs of 20,001 scans each answered "
          f"{sorted({a.status for a in poisoned})} within {slowest:.2f} s; 8 normal clients flipped "
          f"{beside['flips']} times in 20 s beside them, {alone['flips']} alone: {kept:.0%} kept")
    for answer in poisoned:
        assert answer.status == 422 and answer.json()["status"] == 422, answer.body[:300]
        assert refusal in answer.json()["error"]
        assert "Retry-After" not in answer.headers  # not an invitation to send it again
    # Each went to one replica once (a refusal is not retried). A replica flips one poison at a
    # time, and gives each up at the deadline plus at most the decoder's step past it.
    tries = {entry["rid"]: entry for entry in flipfleet.nginx_requests() if entry["rid"].startswith("poison-")}
    assert sorted(tries) == [f"poison-{n}" for n in range(3)] and all(e["status"] == 422 for e in tries.values())
    assert all(len(entry["upstreams"]) == 1 for entry in tries.values()), tries
    on_replica = collections.Counter(entry["upstreams"][0] for entry in tries.values())
    for n, answer in enumerate(poisoned):
        sharing = on_replica[tries[f"poison-{n}"]["upstreams"][0]]
        assert answer.seconds < sharing * (deadline + 2) + 1, (answer.seconds, sharing)
    assert beside["statuses"] == {"200": beside["flips"]}
    # Refused from their markers, the poisons cost nothing; given up at the deadline, each has
    # taken a replica's CPU until then.
    assert kept >= (0.8 if not env else 0.5)
    assert [flipfleet.restart_count(replica) for replica in replicas] == [0] * len(replicas)
