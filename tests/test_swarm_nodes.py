"""flipfleet on a Swarm of three engines in containers (harness.swarm.SwarmLab): one replica per
CPU spread over the nodes, an nginx on each, and a node lost under load."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import time

import pytest
import requests

from harness import alongside, wait_for
from harness.compose import ROOT, offline_image
from harness.locust import under_load
from harness.swarm import SwarmLab, lab_missing
from service.config import Settings
from tests.checks import failures_of_a_lost_node, served_by

USERS = 8
# From the rolling update of nginx on, every flip needs this key (deploy/swarm/api-keys.yaml): the
# loads send it from the start, which an nginx without keys ignores.
LAB_KEY = "lab-key-0123456789abcdef"
# The service's settings when nothing overrides them, as every stack here runs it.
DEFAULTS = Settings.from_env({})

WEB, NGINX = "flipfleet_web", "flipfleet_nginx"


@pytest.fixture(scope="module")
def lab(docker_images):
    """Three engines in containers, all managers, one swarm, a registry, haproxy in front; the stack
    deployed with swarm-deploy.sh's own choice of replicas (one per CPU of the nodes)."""
    missing = lab_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the three-node swarm: {missing}")
        pytest.skip(missing)
    lab = SwarmLab()
    try:
        started = time.monotonic()
        lab.up()
        formed = time.monotonic() - started
        lab.push("flipfleet-web:latest", "flipfleet-web:lab")
        lab.nginx_image = lab.push(offline_image("NGINX_IMAGE", "nginx:1.29"), "flipfleet-nginx:lab")
        lab.said = lab.deploy("flipfleet", FLIP_VERSION="lab", NGINX_IMAGE=lab.nginx_image, HEALTH_INTERVAL="3s",
                              FLIP_PORT="8080").stderr
        assert wait_for(lambda: settled(lab), timeout=90), (lab.front_status(), lab.nginx_admission(NGINX))
        print(f"lab: 3 engines formed a swarm of 3 managers in {formed:.1f} s; stack deployed and every nginx "
              f"in haproxy's rotation {time.monotonic() - started:.1f} s after the start")
        yield lab
    finally:
        lab.down()


def desired_replicas(lab: SwarmLab) -> int:
    return int(lab.manager("service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", WEB).stdout)


def settled(lab: SwarmLab) -> bool:
    """Full capacity: every replica Swarm wants running and answering through the front, an nginx
    on every node that runs, each in haproxy's rotation and admitting its share of every replica."""
    replicas = lab.tasks(WEB)
    if len(replicas) != desired_replicas(lab):
        return False
    nodes = [node for node in lab.nodes if node not in lab.stopped]
    admission = lab.nginx_admission(NGINX)
    share = DEFAULTS.queue // len(nodes)
    in_rotation = {node for node, status in lab.front_status().items() if status == "UP"}
    if set(admission) != set(nodes) or in_rotation != set(nodes):
        return False
    # The share of each replica, for as many as run (one more after a reload: entrypoint.sh).
    if any(max_conns != share or large not in (len(replicas) * share, len(replicas) * share + 1)
           for max_conns, large in admission.values()):
        return False
    seen: set[str] = set()
    return wait_for(lambda: len(seen.update(served_by(lab.url, 6)) or seen) >= len(replicas), timeout=10) and \
        seen == {t["container"][:12] for t in replicas}


def replicas_per_node(lab: SwarmLab) -> collections.Counter:
    return collections.Counter(node for node, _ in lab.running(WEB))


# A node's loss: load through the lab's front for at most LOSS_LOAD_SECONDS, the node lost LOSS_AT s in.
LOSS_LOAD_SECONDS, LOSS_AT = 150, 10
# A lost node's replicas run elsewhere within this: Swarm marks a node down after three missed
# 5 s heartbeats, after an election first when the node led.
RESCHEDULED_WITHIN = 90


@contextlib.contextmanager
def losing(lab: SwarmLab, node: str, tmp_path):
    """`node`'s engine stopped LOSS_AT s into a load of USERS through the lab's front, and started
    again once the load is over: yields when it stopped and the list that then holds the run."""
    try:
        with under_load(lab.url, tmp_path, seconds=LOSS_LOAD_SECONDS, users=USERS, start_after=LOSS_AT,
                        api_key=LAB_KEY) as finished:
            stopped_at = time.monotonic()
            lab.stop_node(node)
            yield stopped_at, finished
    finally:
        lab.start_node(node)


def assert_only_what_the_node_held_failed(lab: SwarmLab, run_, lost: str) -> tuple[int, int]:
    """Failures the design cannot save: connections in flight through the lost node's nginx, and
    flips its replicas held (refused with the JSON 503); at most one per client, whose next
    request must succeed. Anything else fails the test, with what each nginx logged and every
    replica task's history."""
    closed, refused, other = failures_of_a_lost_node(run_.errors("/flip"))
    flips = run_.figures("/flip")

    def trouble() -> str:
        return f"{run_.errors()}\n{lab.nginx_trouble(NGINX)}\n{lab.task_history(WEB)}"

    assert other == {} and flips["failures"] == closed + refused, trouble()
    assert closed + refused <= USERS, f"more than each client's request in flight on {lost}: {trouble()}"
    return closed, refused


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_one_replica_per_cpu_spread_over_three_nodes_an_nginx_on_each_and_each_serves_flips(lab):
    cpus = lab.manager("node", "inspect", "--format", "{{.Description.Resources.NanoCPUs}}", *lab.nodes).stdout
    chosen = sum(int(n) // 10**9 for n in cpus.split())
    assert f"one replica per CPU of the nodes that may run one (ready, active): WEB_REPLICAS={chosen}" in lab.said
    assert "3 managers: the swarm survives the loss of 1 of them" in lab.said, lab.said
    per_node = replicas_per_node(lab)
    assert sum(per_node.values()) == chosen and set(per_node) == set(lab.nodes), per_node
    assert max(per_node.values()) - min(per_node.values()) <= 1, per_node
    # Each nginx admits a third of each replica's queue: the three together never more than it holds.
    assert {max_conns for max_conns, _ in lab.nginx_admission(NGINX).values()} == {DEFAULTS.queue // 3}
    node_of = {container[:12]: node for node, container in lab.running(WEB)}
    answered_on = collections.Counter()
    # Each nginx (one per node) takes its turn over every replica (least_conn ties go round-robin):
    # enough flips for each to reach all of them, whatever order each lists them in.
    flips = len(lab.nodes) * chosen
    for _ in range(flips):
        response = requests.post(lab.url + "/flip", headers={"Authorization": f"Bearer {LAB_KEY}"}, timeout=60)
        assert response.status_code == 200
        answered_on[node_of[response.headers["X-Served-By"]]] += 1
    assert set(answered_on) == set(lab.nodes), answered_on
    print(f"{chosen} replicas (one per CPU the nodes report) spread {dict(per_node)}; {flips} flips through "
          f"haproxy answered on {dict(answered_on)}")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_a_rolling_update_of_nginx_drops_no_request(lab, tmp_path):
    # A new config, as an operator makes one: a changed template, deployed with swarm-deploy.sh,
    # and API keys from then on (a Swarm secret).
    tree = tmp_path / "tree"
    for part in ("scripts", "deploy/swarm", "nginx", "service/defaults.env"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tree / part)
    template = tree / "nginx" / "nginx.conf.template"
    healthy = """return 200 '{"status":"ok"}\\n';"""
    assert healthy in template.read_text()
    template.write_text(template.read_text().replace(healthy, healthy.replace('"ok"', '"ok","config":"new"')))
    keys = tmp_path / "api-keys.txt"
    keys.write_text(f"# the lab's clients\nlab {LAB_KEY}\n")
    before = {t["task"] for t in lab.tasks(NGINX)}
    shares: list[dict] = []

    def sample_shares(stop) -> None:
        while not stop.wait(0.5):
            shares.append(lab.nginx_admission(NGINX))

    with under_load(lab.url, tmp_path, seconds=150, api_key=LAB_KEY) as finished:
        time.sleep(8)
        started = time.monotonic()
        with alongside(sample_shares, timeout=120):
            said = lab.deploy("flipfleet", root=tree, FLIP_VERSION="lab", NGINX_IMAGE=lab.nginx_image,
                              WEB_REPLICAS=str(desired_replicas(lab)), HEALTH_INTERVAL="3s", FLIP_PORT="8080",
                              FLIP_API_KEYS_FILE=str(keys)).stderr
        took = time.monotonic() - started
        assert took < 150 - 8 - 5, "the update outlasted the load"
    flips = finished[0].figures("/flip")
    assert flips["failures"] == 0, finished[0].errors()
    assert not {t["task"] for t in lab.tasks(NGINX)} & before and len(lab.tasks(NGINX)) == 3
    answers = collections.Counter(requests.get(lab.url + "/nginx-health", timeout=5).json().get("config")
                                  for _ in range(9))
    assert answers == {"new": 9}, answers
    # Every nginx asks for a key now, from the secret: a flip (of the sample) without one is refused.
    assert "API keys from " in said and "Swarm secret flipfleet_api_keys_" in said, said
    for node, container in lab.running(NGINX):
        assert flip_status(lab, node, container) == 401, node
        assert flip_status(lab, node, container, f"Authorization: Bearer {LAB_KEY}") == 200, node
    # A new nginx counts itself from its first config on, before DNS lists it (once it is healthy).
    renders = lab.nginx_renders(NGINX)
    assert all(rendered[0] == (DEFAULTS.queue // 3, 3) for rendered in renders.values()), renders
    # Meanwhile the others still admit the larger share they took while it was gone.
    most = max(sum(max_conns for max_conns, _ in seen.values()) for seen in shares)
    print(f"nginx's new config and API keys (a Swarm secret) rolled out over 3 nodes, one at a time, in {took:.1f} s "
          f"under {USERS} users sending a key; each nginx then refused a flip without a key (401); "
          f"{flips['requests']} flips, 0 failed; the nginx together admitted at most {most} flips per replica "
          f"(its queue: {DEFAULTS.queue})")


def flip_status(lab: SwarmLab, node: str, container: str, header: str = "") -> int:
    """The status of nginx's answer to an empty POST /flip (the sample), with `header`, asked
    inside its own container."""
    crlf = "\\r\\n"  # for printf to turn into CR LF
    head = crlf.join(["POST /flip HTTP/1.0", "Content-Length: 0", *([header] if header else [])]) + crlf * 2
    request = f"exec 3<>/dev/tcp/127.0.0.1/8080 && printf '{head}' >&3 && head -n 1 <&3"
    return int(lab.on(node, "exec", container, "bash", "-c", request).stdout.split()[1])


def ask_nginx(lab: SwarmLab, node: str, container: str, path: str) -> tuple[int, str]:
    """The status and body of nginx's answer to GET `path`, asked inside its own container."""
    request = f"exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    answer = lab.on(node, "exec", container, "bash", "-c", request).stdout
    head, _, body = answer.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), body


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_an_nginx_cut_off_from_every_replica_leaves_the_rotation_and_no_flip_fails(lab, tmp_path):
    nginx = dict(lab.running(NGINX))
    cut = lab.nodes[0]
    status, body = ask_nginx(lab, cut, nginx[cut], "/nginx-ready")
    assert status == 200 and body.startswith("flipfleet replica "), (status, body)
    cut_off = []
    try:
        started = time.monotonic()
        lab.cut_off(cut, nginx[cut], DEFAULTS.port)
        cut_off.append(cut)
        assert wait_for(lambda: cut not in lab.in_rotation(), timeout=15, interval=0.25), lab.front_status()
        out_after = time.monotonic() - started
        assert ask_nginx(lab, cut, nginx[cut], "/nginx-ready") == (
            503, '{"error":"no replica answers through this nginx now","status":503}\n')
        assert ask_nginx(lab, cut, nginx[cut], "/nginx-health")[0] == 200  # it runs: Swarm leaves it be
        with under_load(lab.url, tmp_path, seconds=30, users=USERS, api_key=LAB_KEY) as finished:
            time.sleep(15)
        flips = finished[0].figures("/flip")
        assert flips["requests"] > 0 and flips["failures"] == 0, finished[0].errors()
        # Every nginx cut off: each one that runs takes clients again, and answers the JSON 503.
        for node in lab.nodes[1:]:
            lab.cut_off(node, nginx[node], DEFAULTS.port)
            cut_off.append(node)
        assert wait_for(lambda: not lab.in_rotation(), timeout=15, interval=0.25)
        refused = requests.post(lab.url + "/flip", headers={"Authorization": f"Bearer {LAB_KEY}"}, timeout=30)
        assert refused.status_code == 503 and refused.json()["status"] == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
    finally:
        back = time.monotonic()
        for node in cut_off:
            lab.cut_off(node, nginx[node], DEFAULTS.port, cut=False)
    assert wait_for(lambda: settled(lab), timeout=60, interval=0.5), (lab.front_status(), lab.nginx_admission(NGINX))
    print(f"{cut}'s nginx cut off from every replica: out of haproxy's rotation after {out_after:.1f} s; "
          f"{flips['requests']} flips by {USERS} users meanwhile, 0 failed; every nginx cut off: the JSON 503 "
          f"through haproxy; all back at full capacity {time.monotonic() - back:.1f} s after the cut ended")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_losing_a_manager_keeps_a_quorum_a_scale_works_and_the_flips_go_on(lab, tmp_path):
    assert set(lab.managers().values()) == {"Leader", "Reachable"}
    leader = next(node for node, status in lab.managers().items() if status == "Leader")
    replicas = desired_replicas(lab)
    with losing(lab, leader, tmp_path) as (stopped_at, finished):
        elected = wait_for(lambda: "Leader" in lab.managers().values(), timeout=60, interval=0.5)
        elected_after = time.monotonic() - stopped_at
        assert elected, lab.managers()
        lab.manager("service", "scale", "--detach", f"{WEB}={replicas + 1}")
        assert wait_for(lambda: len(lab.tasks(WEB)) == replicas + 1 and leader not in replicas_per_node(lab),
                        timeout=RESCHEDULED_WITHIN, interval=1), replicas_per_node(lab)
        scaled_after = time.monotonic() - stopped_at
        assert scaled_after < LOSS_LOAD_SECONDS - LOSS_AT - 5, "the load ended before the scale took effect"
    closed, refused = assert_only_what_the_node_held_failed(lab, finished[0], leader)
    assert wait_for(lambda: settled(lab), timeout=90), (lab.front_status(), lab.nginx_admission(NGINX))
    assert sorted(lab.managers().values()) == ["Leader", "Reachable", "Reachable"]
    flips = finished[0].figures("/flip")
    print(f"the leader {leader}'s engine stopped under {USERS} users: another manager led {elected_after:.1f} s later, "
          f"`docker service scale` to {replicas + 1} ran {scaled_after:.1f} s after the loss; {flips['requests']} "
          f"flips, {flips['failures']} failed ({closed} connections closed, {refused} JSON 503 for flips the lost "
          "node held)")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_losing_the_node_with_the_most_replicas_fails_only_what_it_held(lab, tmp_path):
    per_node = replicas_per_node(lab)
    lost, held = per_node.most_common(1)[0]
    replicas = desired_replicas(lab)
    role = "the leader" if lab.managers().get(lost) == "Leader" else "a manager"
    with losing(lab, lost, tmp_path) as (stopped_at, finished):
        out_of_rotation = wait_for(lambda: lost not in lab.in_rotation(), timeout=30, interval=0.25)
        out_after = time.monotonic() - stopped_at
        back = wait_for(lambda: len(lab.tasks(WEB)) == replicas and lost not in replicas_per_node(lab),
                        timeout=RESCHEDULED_WITHIN, interval=0.5)
        back_after = time.monotonic() - stopped_at
        full = wait_for(lambda: settled(lab), timeout=60, interval=0.5)
        full_after = time.monotonic() - stopped_at
        assert out_of_rotation and back and full, (lab.front_status(), replicas_per_node(lab),
                                                   lab.nginx_admission(NGINX))
        assert full_after < LOSS_LOAD_SECONDS - LOSS_AT - 5, "the load ended before full capacity came back"
    closed, refused = assert_only_what_the_node_held_failed(lab, finished[0], lost)
    flips = finished[0].figures("/flip")
    print(f"{lost}'s engine ({role}), running {held} of {replicas} replicas and an nginx, stopped under {USERS} users: "
          f"out of haproxy's rotation after {out_after:.1f} s, its replicas running elsewhere after "
          f"{back_after:.1f} s, full capacity (every replica answering, each nginx admitting half of each queue) after "
          f"{full_after:.1f} s; {flips['requests']} flips, {flips['failures']} failed ({closed} connections closed, "
          f"{refused} JSON 503 for flips the lost node held), none the design could save")
