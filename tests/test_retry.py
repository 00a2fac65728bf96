"""A flip whose replica dies under it, end to end through nginx on a real Docker engine: it is sent
once more, to another replica, and never to a third. The test kills whichever replica holds the
flip, found from the connections nginx has open to each replica."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from harness import client, wait_for
from tests.checks import assert_json_503
from tests.crafted_jpeg import many_scans_jpeg

pytestmark = pytest.mark.docker

ESTABLISHED = "01"  # a TCP state in /proc/net/tcp
# The replicas' port, where nginx connects (compose.yaml's FLIP_UPSTREAM, web:8000).
REPLICA_PORT = 8000
FLIP_MAX_SECONDS = 3


def _address(hex_address: str) -> tuple[str, int]:
    """An IPv4 address and port as /proc/net/tcp writes them (the address in host byte order)."""
    address, port = hex_address.split(":")
    return socket.inet_ntoa(bytes.fromhex(address)[::-1]), int(port, 16)


def connections_from(pid: int, peer: str) -> set[int]:
    """The ports `peer` holds open to the replica port in the network namespace of process `pid`
    (read from the host, so it costs no `docker exec`); empty once the process is gone."""
    try:
        lines = open(f"/proc/{pid}/net/tcp").read().splitlines()[1:]
    except OSError:
        return set()
    found = set()
    for line in lines:
        local, remote, state = line.split()[1:4]
        remote_address, remote_port = _address(remote)
        if state == ESTABLISHED and _address(local)[1] == REPLICA_PORT and remote_address == peer:
            found.add(remote_port)
    return found


def ip_address(flipfleet, container: str) -> str:
    return flipfleet.inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")


@pytest.mark.parametrize(
    ("kills", "status"),
    [(1, 422),  # the second replica answers: its own JSON 422 (the deadline), never sent on
     (2, 503)],  # the second replica dies too: nginx's JSON 503, and no third replica
    ids=["one-replica-killed", "two-replicas-killed"],
)
def test_a_flip_whose_replica_dies_is_sent_once_more_to_another_and_never_to_a_third(stack, kills, status):
    # A picture that takes the decoder about 20 s (24,000 scans of 12 MP): each replica holds it
    # until the deadline, long enough to find it and kill the replica under it.
    flipfleet = stack(3, FLIP_MAX_SCANS="1000000", FLIP_MAX_SECONDS=str(FLIP_MAX_SECONDS))
    slow = many_scans_jpeg((4000, 3000), scans=24_000)
    nginx = ip_address(flipfleet, flipfleet.container_ids("nginx")[0])
    pids = {container: int(flipfleet.inspect(container, "{{.State.Pid}}")) for container in flipfleet.container_ids()}
    idle = {container: connections_from(pid, nginx) for container, pid in pids.items()}
    # Read now: a killed replica has no address until Docker has started it again.
    addresses = {ip_address(flipfleet, container): container for container in pids}
    answers = []
    sender = threading.Thread(target=lambda: answers.append(client.post(
        flipfleet.url + "/flip", slow, {"Content-Type": "image/jpeg", "X-Request-ID": "killed-under"}, timeout=60)))

    def holder() -> str | None:
        """The replica, of those not killed, on which nginx opened a connection since the start."""
        held = [c for c, pid in pids.items() if c not in killed and connections_from(pid, nginx) - idle[c]]
        assert len(held) <= 1, held  # one flip: on one replica at a time
        return held[0] if held else None

    killed: list[str] = []
    sender.start()
    for _ in range(kills):
        victim = wait_for(holder, timeout=15, interval=0.005)
        assert victim, f"no replica took the flip (killed so far: {killed})"
        flipfleet.kill_process(victim)
        killed.append(victim)
    started = time.monotonic()
    # Until the answer, no replica but the ones killed (and the one that answered) holds the flip.
    others = []
    while sender.is_alive() and time.monotonic() - started < 60:
        current = holder()
        if current and current not in others:
            others.append(current)
        time.sleep(0.005)
    sender.join(timeout=5)

    (answer,) = answers
    (logged,) = [entry for entry in flipfleet.nginx_requests() if entry["rid"] == "killed-under"]
    print(f"{kills} replica(s) killed under a flip: answered {answer.status} "
          f"{answer.body.decode(errors='replace')[:120]}; nginx tried {', '.join(logged['upstreams'])} "
          f"({', '.join(logged['upstream_statuses'])}), sent it {len(logged['sent_to'])} times")
    sent_to = [address.removesuffix(f":{REPLICA_PORT}") for address in logged["sent_to"]]
    assert len(sent_to) == 2, logged
    if kills == 1:
        # The second replica flipped it until the deadline and refused it with its own 422.
        assert answer.status == 422 and answer.json()["status"] == 422, answer.body[:300]
        assert f"took longer than {FLIP_MAX_SECONDS} s" in answer.json()["error"]
        assert "Retry-After" not in answer.headers
        assert len(others) == 1 and others[0] != killed[0], (others, killed)
        assert [addresses.get(a) for a in sent_to] == [killed[0], others[0]], (sent_to, logged)
    else:
        assert_json_503(answer.status, answer.headers, answer.body)
        assert others == [], others  # no third replica took it
        assert [addresses.get(a) for a in sent_to] == killed, (sent_to, logged)
    # The replicas left alone were never even connected to for it, and none but the one that answered
    # logged it (a killed replica dies before it logs).
    spared = [ip for ip, container in addresses.items() if container not in killed and container not in others]
    assert not {a.removesuffix(f":{REPLICA_PORT}") for a in logged["upstreams"]} & set(spared), logged
    logged_by_replicas = [line for line in flipfleet.logs("web").splitlines() if "rid=killed-under " in line]
    assert len(logged_by_replicas) == (1 if kills == 1 else 0), logged_by_replicas
    assert all(flipfleet.restart_count(container) == 0 for container in pids if container not in killed)
