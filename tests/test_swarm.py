"""flipfleet on Docker Swarm: the stack file against compose.yaml; a one-node swarm on this
engine through scripts/swarm-*.sh (scaling, a killed replica, a rolling update under load and
one that rolls back); three engines in containers forming one swarm that loses a node."""

from __future__ import annotations

import collections
import os
import subprocess
import time

import pytest
import requests
import yaml

from harness import wait_for
from harness.compose import ROOT, offline_image, run
from harness.locust import under_load
from harness.swarm import OneNodeStack, SwarmLab, lab_missing
from service.config import Settings
from tests.checks import failures_of_a_kill

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
STACK = yaml.safe_load((ROOT / "deploy" / "swarm" / "stack.yaml").read_text())
USERS = 8


# -- the stack file (no Docker needed; it is generated from compose.yaml: tests/test_generated.py) --

def test_the_stack_file_uses_no_key_that_swarm_ignores_or_refuses():
    # Found by deploying each: ignored with a warning, silently ignored, or refused.
    assert "name" not in STACK and "version" not in STACK
    for service in STACK["services"].values():
        ignored = {"build", "restart", "security_opt", "profiles", "depends_on", "container_name", "tmpfs"}
        assert not ignored & set(service)
    assert set(STACK["services"]) == {"web", "nginx"}
    assert STACK["services"]["web"]["deploy"]["update_config"]["order"] == "start-first"
    assert STACK["services"]["web"]["deploy"]["update_config"]["failure_action"] == "rollback"


def test_the_configs_are_the_files_compose_mounts():
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in COMPOSE["services"]["nginx"]["volumes"]}
    configs = {config["target"]: STACK["configs"][config["source"]]["file"]
               for config in STACK["services"]["nginx"]["configs"]}
    stack_dir = ROOT / "deploy" / "swarm"
    assert len(configs) == 3
    for target, source in configs.items():
        directory = next(m for m in mounts if target.startswith(m))
        mounted = ROOT / mounts[directory] / target[len(directory):].lstrip("/")
        assert (stack_dir / source).resolve() == mounted.resolve()


def test_compose_tmpfs_is_a_sized_tmpfs_volume_in_the_stack():
    for name in ("web", "nginx"):
        size = COMPOSE["services"][name]["tmpfs"][0].split("size=")[1]
        (volume,) = [v for v in STACK["services"][name]["volumes"] if v["type"] == "tmpfs"]
        assert volume["target"] == "/tmp" and volume["tmpfs"]["size"] == int(size[:-1]) * 1024 * 1024


# -- on Docker ------------------------------------------------------------------------------------

def served_by(url: str, count: int) -> collections.Counter:
    return collections.Counter(requests.get(url + "/", timeout=10).headers["X-Served-By"] for _ in range(count))


@pytest.fixture(scope="module")
def one_node(docker_images):
    """The stack on this engine's swarm (made if there is none), torn down with the swarm."""
    stack = OneNodeStack(HEALTH_INTERVAL="2s")
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        left = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack.name}"]).stdout
        assert not left.strip()


@pytest.mark.docker
@pytest.mark.swarm
def test_every_replica_answers_and_a_scale_is_picked_up_without_restarting_nginx(one_node):
    assert len(served_by(one_node.url, 10)) == 2
    edge = one_node.edge_container()
    started = run(["docker", "inspect", "--format", "{{.State.StartedAt}}", edge]).stdout
    run(["docker", "service", "scale", "--detach=false", f"{one_node.name}_web=4"], timeout=180)
    scaled_at = time.monotonic()
    seen: set[str] = set()
    assert wait_for(lambda: len(seen.update(served_by(one_node.url, 8)) or seen) == 4, timeout=30), seen
    print(f"scaled 2 -> 4: nginx answered from all 4 replicas {time.monotonic() - scaled_at:.1f} s after "
          "`docker service scale` returned")
    assert run(["docker", "inspect", "--format", "{{.State.StartedAt}}", edge]).stdout == started
    response = requests.post(one_node.url + "/flip", timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"


@pytest.mark.docker
@pytest.mark.swarm
def test_a_killed_replica_is_replaced_under_load(one_node, tmp_path):
    before = one_node.tasks()
    victim = before[0]
    with under_load(one_node.url, tmp_path, seconds=30) as finished:
        time.sleep(10)
        pid = int(run(["docker", "inspect", "--format", "{{.State.Pid}}", victim["container"]]).stdout)
        run(["kill", "-9", str(pid)])
        killed_at = time.monotonic()
        assert wait_for(lambda: len(one_node.tasks()) == len(before) and victim["task"] not in
                        {t["task"] for t in one_node.tasks()}, timeout=60)
        replaced_after = time.monotonic() - killed_at
    flips = finished[0].figures("/flip")
    cut, refused, other = failures_of_a_kill(finished[0].errors("/flip"))
    assert other == {} and flips["failures"] == cut + refused, finished[0].errors()
    assert cut <= 1 and refused <= Settings.from_env({}).queue, finished[0].errors()
    print(f"a replica killed under {USERS} users: Swarm ran a new task {replaced_after:.1f} s later; "
          f"{flips['requests']} flips, {flips['failures']} failed ({cut} cut mid-transfer, {refused} held by the "
          "killed replica)")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_a_rolling_update_under_load_fails_no_request(one_node, tmp_path):
    before = {t["task"] for t in one_node.tasks()}
    with under_load(one_node.url, tmp_path, seconds=90) as finished:
        time.sleep(8)
        started = time.monotonic()
        one_node.script("swarm-rollout.sh", FLIP_VERSION="rolled")
        took = time.monotonic() - started
        assert took < 90 - 8 - 5, "the rollout outlasted the load"
    flips = finished[0].figures("/flip")
    assert flips["failures"] == 0, finished[0].errors()
    after = one_node.tasks()
    assert not {t["task"] for t in after} & before and all(":rolled" in t["image"] for t in after)
    versions = {requests.get(one_node.url + "/", timeout=10).headers["X-Flipfleet-Version"] for _ in range(12)}
    assert versions == {"rolled"}
    print(f"swarm-rollout.sh: {len(after)} replicas replaced in {took:.1f} s under {USERS} users; "
          f"{flips['requests']} flips, 0 failed")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_an_update_that_never_gets_healthy_rolls_back_by_itself(one_node, tmp_path):
    # A release that starts but never answers: its healthcheck never passes.
    broken = f"{one_node.registry}/flipfleet-web:broken"
    subprocess.run(["docker", "build", "-q", "-t", broken, "-"], input=(
        'FROM flipfleet-web:latest\nCMD ["python", "-c", "import time; time.sleep(3600)"]\n'),
        text=True, capture_output=True, check=True, timeout=120)
    run(["docker", "push", "-q", broken], timeout=120)
    before = one_node.tasks()
    images = {t["image"] for t in before}
    with under_load(one_node.url, tmp_path, seconds=90) as finished:
        time.sleep(5)
        started = time.monotonic()
        result = one_node.script("swarm-rollout.sh", "--no-build", FLIP_VERSION="broken", check=False)
        took = time.monotonic() - started
        assert took < 90 - 5 - 5, "the rollback outlasted the load"
    assert result.returncode == 1 and "rollback_completed" in result.stderr, result.stderr[-2000:]
    flips = finished[0].figures("/flip")
    assert flips["failures"] == 0, finished[0].errors()
    assert {t["image"] for t in one_node.tasks()} == images and len(one_node.tasks()) == len(before)
    print(f"update to an image that never gets healthy: rolled back by Swarm {took:.1f} s after it began; "
          f"{flips['requests']} flips meanwhile, 0 failed")


# -- three engines, one swarm -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(docker_images):
    """Three engines in containers, one swarm, a registry; the stack deployed, 3 web replicas."""
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
        nginx = lab.push(offline_image("NGINX_IMAGE", "nginx:1.29"), "flipfleet-nginx:lab")
        lab.deploy("flipfleet", FLIP_VERSION="lab", NGINX_IMAGE=nginx, WEB_REPLICAS="3", HEALTH_INTERVAL="2s",
                   FLIP_PORT="8080")
        print(f"lab: 3 engines formed a swarm in {formed:.1f} s; stack deployed "
              f"{time.monotonic() - started:.1f} s after the start")
        assert wait_for(lambda: requests.get(lab.url + "/nginx-health", timeout=2).ok, timeout=60)
        yield lab
    finally:
        lab.down()


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_replicas_spread_over_three_nodes_and_each_serves_flips(lab):
    names = lab.node_names()
    tasks = lab.tasks("flipfleet_web")
    assert len(tasks) == 3 and {names[t["node"]] for t in tasks} == set(lab.nodes), tasks
    node_of = {t["container"][:12]: names[t["node"]] for t in tasks}
    answered_on = collections.Counter()
    for _ in range(12):
        response = requests.post(lab.url + "/flip", timeout=60)
        assert response.status_code == 200
        answered_on[node_of[response.headers["X-Served-By"]]] += 1
    assert set(answered_on) == set(lab.nodes), answered_on
    print(f"12 flips through nginx on {lab.nodes[0]}: answered on {dict(answered_on)}")


@pytest.mark.docker
@pytest.mark.swarm
@pytest.mark.slow
def test_losing_a_worker_node_reschedules_its_replica_and_the_load_goes_on(lab, tmp_path):
    names = lab.node_names()
    worker = lab.nodes[2]
    with under_load(lab.url, tmp_path, seconds=90) as finished:
        time.sleep(10)
        run(["docker", "stop", "--time", "5", worker])
        stopped_at = time.monotonic()
        back = wait_for(lambda: [names[t["node"]] for t in lab.tasks("flipfleet_web")].count(worker) == 0
                        and len(lab.tasks("flipfleet_web")) == 3, timeout=60, interval=1)
        rescheduled_after = time.monotonic() - stopped_at
        # Full capacity: nginx spreads requests over three replicas again.
        seen: set[str] = set()
        full = wait_for(lambda: len(seen.update(served_by(lab.url, 6)) or seen) >= 3 and
                        set(served_by(lab.url, 9)) == {t["container"][:12] for t in lab.tasks("flipfleet_web")},
                        timeout=60, interval=1)
        full_after = time.monotonic() - stopped_at
        assert full_after < 90 - 10 - 5, "the load ended before full capacity came back"
    assert back and full, lab.tasks("flipfleet_web")
    flips = finished[0].figures("/flip")
    # Only the flips in flight on the lost node may fail: at most what one replica holds.
    assert flips["failures"] <= 8, finished[0].errors()
    print(f"worker {worker} stopped under {USERS} users: its replica running on another node "
          f"{rescheduled_after:.1f} s later, nginx answering from 3 replicas again after {full_after:.1f} s; "
          f"{flips['requests']} flips, {flips['failures']} failed {finished[0].errors() or ''}")
