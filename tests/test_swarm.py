"""flipfleet on Docker Swarm: the stack file against compose.yaml; a one-node swarm on this
engine through scripts/swarm-*.sh (scaling, a killed replica, a rolling update under load and
one that rolls back). Three engines forming one swarm: tests/test_swarm_nodes.py."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import requests
import yaml

from harness import wait_for
from harness.compose import ROOT, run
from harness.locust import under_load
from harness.swarm import OneNodeStack
from service.config import Settings
from tests.checks import failures_of_a_kill, served_by

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
STACK = yaml.safe_load((ROOT / "deploy" / "swarm" / "stack.yaml").read_text())
USERS = 8
# The service's settings when nothing overrides them, as every stack here runs it.
DEFAULTS = Settings.from_env({})


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
    # The short ones but the keys file's: it and the certificate's (long syntax) are Swarm secrets
    # instead (the next tests).
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in COMPOSE["services"]["nginx"]["volumes"]
              if isinstance(volume, str) and "FLIP_API_KEYS_FILE" not in volume}
    configs = {config["target"]: STACK["configs"][config["source"]]["file"]
               for config in STACK["services"]["nginx"]["configs"]}
    stack_dir = ROOT / "deploy" / "swarm"
    assert len(configs) == 3
    for target, source in configs.items():
        directory = next(m for m in mounts if target.startswith(m))
        mounted = ROOT / mounts[directory] / target[len(directory):].lstrip("/")
        assert (stack_dir / source).resolve() == mounted.resolve()


def test_https_takes_secrets_in_the_stack_where_compose_mounts_files():
    names = {"FLIP_TLS_CERT", "FLIP_TLS_KEY"}
    assert names <= set(COMPOSE["services"]["nginx"]["environment"])
    assert not names & set(STACK["services"]["nginx"]["environment"])  # unless tls.yaml is deployed over it
    tls = yaml.safe_load((ROOT / "deploy" / "swarm" / "tls.yaml").read_text())
    nginx = tls["services"]["nginx"]
    assert set(nginx["environment"]) == names
    assert set(nginx["environment"].values()) == {f"/run/secrets/{secret['target']}" for secret in nginx["secrets"]}
    assert {secret["source"] for secret in nginx["secrets"]} == set(tls["secrets"])
    uid, gid = COMPOSE["services"]["nginx"]["user"].split(":")
    assert all(secret["uid"] == uid and secret["gid"] == gid for secret in nginx["secrets"])


def test_api_keys_take_a_secret_in_the_stack_where_compose_mounts_a_file():
    assert "FLIP_API_KEYS_FILE" in COMPOSE["services"]["nginx"]["environment"]
    assert "FLIP_API_KEYS_FILE" not in STACK["services"]["nginx"]["environment"]  # unless api-keys.yaml is over it
    keys = yaml.safe_load((ROOT / "deploy" / "swarm" / "api-keys.yaml").read_text())
    nginx = keys["services"]["nginx"]
    (secret,) = nginx["secrets"]
    assert nginx["environment"] == {"FLIP_API_KEYS_FILE": f"/run/secrets/{secret['target']}"}
    assert set(keys["secrets"]) == {secret["source"]}
    # Owned by nginx's user, readable by it alone.
    uid, gid = COMPOSE["services"]["nginx"]["user"].split(":")
    assert (secret["uid"], secret["gid"], secret["mode"]) == (uid, gid, 0o400)
    # The file scripts/swarm-deploy.sh makes absolute, in a secret named after its hash.
    assert re.fullmatch(r"\$\{FLIP_API_KEYS_FILE:\?[^}]+\}", keys["secrets"][secret["source"]]["file"])
    assert keys["secrets"][secret["source"]]["name"].endswith("_${API_KEYS_HASH:-0}")
    assert "API_KEYS_HASH=" in (ROOT / "scripts" / "swarm-deploy.sh").read_text()


def test_compose_tmpfs_is_a_sized_tmpfs_volume_in_the_stack():
    for name in ("web", "nginx"):
        size = COMPOSE["services"][name]["tmpfs"][0].split("size=")[1]
        (volume,) = [v for v in STACK["services"][name]["volumes"] if v["type"] == "tmpfs"]
        assert volume["target"] == "/tmp" and volume["tmpfs"]["size"] == int(size[:-1]) * 1024 * 1024


def test_haproxy_waits_longer_than_nginx_so_that_nginx_answers_first():
    config = (ROOT / "deploy" / "swarm" / "haproxy.cfg").read_text()
    waits = [int(seconds) for seconds in re.findall(r"^\s*timeout (?:client|server) (\d+)s$", config, re.MULTILINE)]
    assert len(waits) == 2 and min(waits) > DEFAULTS.answer_seconds


# -- on Docker ------------------------------------------------------------------------------------

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
def test_one_replica_per_cpu_each_answers_and_a_scale_is_picked_up_without_restarting_nginx(one_node):
    cpus = int(run(["bash", "-c", ". scripts/lib.sh; engine_cpus"]).stdout)
    assert f"one replica per CPU the engine can use: WEB_REPLICAS={cpus}" in one_node.said, one_node.said
    assert len(one_node.tasks()) == cpus
    seen: set[str] = set()
    assert wait_for(lambda: len(seen.update(served_by(one_node.url, 4)) or seen) == cpus, timeout=30), seen
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
    assert cut <= 1 and refused <= DEFAULTS.queue, finished[0].errors()
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
