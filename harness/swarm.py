"""Docker Swarm for the tests: a stack on this engine through scripts/swarm-*.sh, and a lab of
three Docker engines in containers (docker-in-docker) that form a swarm of three managers, with
a registry beside them and haproxy in front. Names carry a prefix of their own; everything is
removed at the end. Load only ever goes to 127.0.0.1 ports published from the lab."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import requests

from harness import ROOT, wait_for
from harness.compose import PROJECT_PREFIX, nginx_trouble, offline_image, run

# What a docker-in-docker node needs without --privileged (which these machines refuse).
NODE_OPTIONS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                "--security-opt", "apparmor=unconfined"]


class OneNodeStack:
    """The stack on this engine, as scripts/swarm-up.sh makes it, nginx on an ephemeral port."""

    def __init__(self, **env: str):
        self.name = f"{PROJECT_PREFIX}{os.getpid()}-swarm-{secrets.token_hex(3)}"
        self.env = {"FLIPFLEET_STACK": self.name, "FLIP_PORT": "", "FLIP_REGISTRY_PORT": "", **env}
        self.port = 0
        self.said = ""  # what swarm-up.sh logged: what it chose, and why

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, name: str, *args: str, timeout: float = 600, check: bool = True, **env: str):
        return run(["bash", f"scripts/{name}", *args], timeout=timeout, env={**self.env, **env}, check=check)

    def up(self) -> None:
        self.said = self.script("swarm-up.sh").stderr
        edge = run(["docker", "compose", "-p", f"{self.name}-edge", "port", "nginx", "8080"], env=self.env)
        self.port = int(edge.stdout.strip().rsplit(":", 1)[1])

    def down(self) -> None:
        self.script("swarm-down.sh", timeout=180, check=False)

    @property
    def registry(self) -> str:
        return run(["docker", "port", f"{self.name}-registry", "5000/tcp"]).stdout.split()[0]

    def tasks(self) -> list[dict]:
        """The web service's running tasks: task, container and node ids, and the image."""
        return running_tasks(lambda *args: run(["docker", *args]), f"{self.name}_web")

    def edge_container(self) -> str:
        return run(["docker", "compose", "-p", f"{self.name}-edge", "ps", "-q", "nginx"], env=self.env).stdout.strip()


def running_tasks(docker, service: str) -> list[dict]:
    """`docker` runs a docker command against the manager; the running tasks of `service`."""
    ids = docker("service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
    if not ids:
        return []
    found = []
    for task in json.loads(docker("inspect", *ids).stdout):
        if task["Status"]["State"] != "running":
            continue
        found.append({
            "task": task["ID"],
            "node": task["NodeID"],
            "container": task["Status"].get("ContainerStatus", {}).get("ContainerID", ""),
            "image": task["Spec"]["ContainerSpec"]["Image"],
        })
    return found


class SwarmLab:
    """Three Docker engines in containers on a network of their own, all three managers (Raft keeps
    a majority when one is lost) and all labelled to run nginx; a registry they pull from (the host
    pushes to it on 127.0.0.1); and haproxy in front of the nodes' nginx (deploy/swarm/haproxy.cfg),
    standing in for a cloud load balancer, published on 127.0.0.1. Each node keeps its address
    when it is stopped and started again, as a machine does, so that it rejoins the swarm."""

    NODES = 3

    def __init__(self):
        self.prefix = f"fflab-{secrets.token_hex(3)}"
        self.network = f"{self.prefix}-net"
        self.registry_name = f"{self.prefix}-registry"
        self.front_name = f"{self.prefix}-haproxy"
        # One DNS name whose A records are every node: what haproxy is given, as a user gives theirs.
        self.nodes_name = f"{self.prefix}-nodes"
        self.nodes = [f"{self.prefix}-node{i}" for i in range(1, self.NODES + 1)]
        self.control = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.node_image = offline_image("DIND_IMAGE", "docker:dind")
        self.registry_image = offline_image("REGISTRY_IMAGE", "registry:2")
        self.front_image = offline_image("HAPROXY_IMAGE", "haproxy:3.0")
        self.addresses: dict[str, str] = {}
        self.stopped: set[str] = set()
        self.front_port = 0
        self.stats_port = 0

    # -- the lab -----------------------------------------------------------------------------

    def up(self) -> None:
        self._network()
        run(["docker", "run", "-d", "--name", self.registry_name, "--network", self.network,
             "-p", "127.0.0.1::5000", "-v", f"{self.registry_name}:/var/lib/registry", self.registry_image])
        for node in self.nodes:
            (self.control / node).mkdir()
            run(["docker", "run", "-d", "--name", node, "--hostname", node, "--network", self.network,
                 "--ip", self.addresses[node], "--network-alias", self.nodes_name, *NODE_OPTIONS,
                 "-v", f"{node}:/var/lib/docker", "-v", f"{self.control / node}:/control", self.node_image,
                 "--insecure-registry", f"{self.registry_name}:5000",
                 "-H", "unix:///var/run/docker.sock", "-H", "unix:///control/docker.sock"])
        for node in self.nodes:
            self._wait_for_engine(node)
        first = self.nodes[0]
        self.on(first, "swarm", "init", "--advertise-addr", self.addresses[first])
        token = self.on(first, "swarm", "join-token", "-q", "manager").stdout.strip()
        for node in self.nodes[1:]:
            self.on(node, "swarm", "join", "--token", token, f"{self.addresses[first]}:2377")
        if not wait_for(lambda: self.ready_nodes() == self.NODES, timeout=60, interval=0.5):
            raise RuntimeError(f"the swarm has {self.ready_nodes()} Ready nodes, not {self.NODES}")
        for node in self.nodes:
            self.manager("node", "update", "--label-add", "flipfleet.nginx=true", node)
        run(["docker", "run", "-d", "--name", self.front_name, "--network", self.network,
             "--memory", "256m", "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8404",
             "-e", f"NGINX_NODES={self.nodes_name}", "-e", "FLIP_PORT=8080",
             "-v", f"{ROOT / 'deploy' / 'swarm' / 'haproxy.cfg'}:/usr/local/etc/haproxy/haproxy.cfg:ro",
             self.front_image])
        self.front_port = self._published(self.front_name, 8080)
        self.stats_port = self._published(self.front_name, 8404)

    def _network(self) -> None:
        """A network whose subnet is fixed (Docker's own choice), so that nodes can have fixed
        addresses: the last ones of the subnet, which Docker gives no other container first."""
        run(["docker", "network", "create", self.network])
        subnet = run(["docker", "network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}",
                      self.network]).stdout.strip()
        run(["docker", "network", "rm", self.network])
        run(["docker", "network", "create", "--subnet", subnet, self.network])
        last = ipaddress.ip_network(subnet).broadcast_address
        self.addresses = {node: str(last - 1 - i) for i, node in enumerate(self.nodes)}

    def _wait_for_engine(self, node: str) -> None:
        if not wait_for(lambda: self.on(node, "info", check=False).returncode == 0, timeout=60, interval=0.5):
            logs = run(["docker", "logs", node], check=False).stderr[-2000:]
            raise RuntimeError(f"{node}'s engine did not start:\n{logs}")

    @staticmethod
    def _published(container: str, port: int) -> int:
        return int(run(["docker", "port", container, f"{port}/tcp"]).stdout.split()[0].rsplit(":", 1)[1])

    def down(self) -> None:
        run(["docker", "rm", "-f", "-v", self.front_name, *self.nodes, self.registry_name], check=False, timeout=120)
        run(["docker", "volume", "rm", *self.nodes, self.registry_name], check=False)
        run(["docker", "network", "rm", self.network], check=False)
        shutil.rmtree(self.control, ignore_errors=True)

    def stop_node(self, node: str, grace: int = 5) -> None:
        """Stop the node's engine (SIGTERM to dockerd, which stops its containers; SIGKILL to all
        that is left after `grace` seconds): the machine is lost."""
        self.stopped.add(node)
        run(["docker", "stop", "--time", str(grace), node], timeout=grace + 60)

    def start_node(self, node: str) -> None:
        """Start the node again, and wait until the swarm counts it Ready."""
        run(["docker", "start", node])
        self._wait_for_engine(node)
        self.stopped.discard(node)
        if not wait_for(lambda: self.ready_nodes() == self.NODES, timeout=90, interval=0.5):
            raise RuntimeError(f"{node} did not rejoin: {self.ready_nodes()} Ready nodes")

    def cut_off(self, node: str, container: str, port: int, cut: bool = True) -> None:
        """Drop what `container` on `node` sends to `port` of any address (with cut=False, stop
        dropping it): the container cut off from a service, as a broken network cuts it, answering
        nothing."""
        pid = self.on(node, "inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
        rule = ["OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        run(["docker", "exec", node, "nsenter", "-t", pid, "-n", "iptables", "-I" if cut else "-D", *rule])

    # -- talking to it -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The front: haproxy, on 127.0.0.1."""
        return f"http://127.0.0.1:{self.front_port}"

    def on(self, node: str, *args: str, check: bool = True, timeout: float = 120):
        """A docker command run by the engine inside `node`."""
        return run(["docker", "exec", node, "docker", *args], check=check, timeout=timeout)

    def manager_socket(self) -> str:
        """The socket of a manager that runs (the first node not stopped)."""
        node = next(n for n in self.nodes if n not in self.stopped)
        return f"unix://{self.control / node / 'docker.sock'}"

    def manager(self, *args: str, check: bool = True, timeout: float = 300, **env: str):
        """A docker command (the host's client) against a running manager, through its socket."""
        return run(["docker", *args], check=check, timeout=timeout, env={"DOCKER_HOST": self.manager_socket(), **env})

    def ready_nodes(self) -> int:
        listed = self.manager("node", "ls", "--format", "{{.Status}}", check=False, timeout=30).stdout.split()
        return listed.count("Ready")

    def managers(self) -> dict[str, str]:
        """Each node's hostname -> its manager status (Leader, Reachable, Unreachable); empty while
        the managers have no leader (they answer nothing then)."""
        listed = self.manager("node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}", check=False,
                              timeout=30).stdout
        return dict(line.split() for line in listed.splitlines() if len(line.split()) == 2)

    def node_names(self) -> dict[str, str]:
        """Node id -> the node's hostname (its container's name)."""
        listed = self.manager("node", "ls", "--format", "{{.ID}} {{.Hostname}}").stdout
        return dict(line.split() for line in listed.splitlines())

    def push(self, image: str, name: str) -> str:
        """Push a local image to the lab's registry; the name the nodes pull it by."""
        host_port = run(["docker", "port", self.registry_name, "5000/tcp"]).stdout.split()[0]
        run(["docker", "tag", image, f"{host_port}/{name}"])
        run(["docker", "push", "-q", f"{host_port}/{name}"], timeout=300)
        return f"{self.registry_name}:5000/{name}"

    def deploy(self, stack: str, root: Path = ROOT, **env: str):
        """scripts/swarm-deploy.sh (of the tree at `root`) against a manager, images from the lab's
        registry; what it printed."""
        return run(["bash", str(root / "scripts" / "swarm-deploy.sh"), stack], timeout=600,
                   env={"DOCKER_HOST": self.manager_socket(), "FLIP_REGISTRY": f"{self.registry_name}:5000", **env})

    def tasks(self, service: str) -> list[dict]:
        return running_tasks(lambda *args: self.manager(*args), service)

    def front_status(self) -> dict[str, str]:
        """haproxy's view: each node it knows (by name) -> UP, DOWN, or a state on the way."""
        names = {address: node for node, address in self.addresses.items()}
        table = requests.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=5).text.lstrip("# ")
        return {names.get(row["addr"].rsplit(":", 1)[0], row["addr"]): row["status"]
                for row in csv.DictReader(io.StringIO(table))
                if row["pxname"] == "nginx" and row["svname"] not in ("BACKEND", "FRONTEND") and row["addr"]}

    def in_rotation(self) -> set[str]:
        """The nodes haproxy sends connections to: UP, or "UP 1/2" (a check failed; one more and
        it is out)."""
        return {node for node, status in self.front_status().items() if status.startswith("UP")}

    def running(self, service: str) -> list[tuple[str, str]]:
        """Each running task of `service`: (its node's name, its container), for `on`."""
        names = self.node_names()
        return [(names[task["node"]], task["container"]) for task in self.tasks(service)]

    def nginx_admission(self, service: str) -> dict[str, tuple[int, int]]:
        """Each running nginx task's node -> (max_conns per replica, large bodies admitted), read
        from the config its entrypoint last rendered."""
        found = {}
        for node, container in self.running(service):
            config = self.on(node, "exec", container, "cat", "/tmp/nginx.conf", check=False).stdout
            flips = re.search(r"upstream flips \{[^}]*max_conns=(\d+)", config)
            large = re.search(r"limit_conn large_bodies (\d+);", config)
            if flips and large:
                found[node] = (int(flips.group(1)), int(large.group(1)))
        return found

    def nginx_trouble(self, service: str, lines: int = 40) -> str:
        """Each running nginx task's last warnings, errors and non-2xx answers, by node: what a
        failed test shows of the fleet."""
        found = []
        for node, container in self.running(service):
            log = self.on(node, "logs", container, check=False)
            found += [f"nginx on {node}:", *nginx_trouble(log.stdout + log.stderr)[-lines:]]
        return "\n".join(found)

    def task_history(self, service: str) -> str:
        """Every task `service` has had, current and past: node, desired and current state, and
        the error that ended it (a node marked down, a failed healthcheck), as a failed test shows."""
        return self.manager("service", "ps", "--no-trunc", "--format",
                            "{{.Name}} {{.Node}} desired={{.DesiredState}} {{.CurrentState}} {{.Error}}",
                            service, check=False).stdout

    def nginx_renders(self, service: str) -> dict[str, list[tuple[int, int]]]:
        """Each running nginx task's node -> every config its entrypoint rendered, in order, as
        (max_conns per replica, nginx it counted), from its log."""
        found = {}
        for node, container in self.running(service):
            log = self.on(node, "logs", container, check=False).stderr
            found[node] = [(int(m), int(n)) for m, n in
                           re.findall(r"max_conns (\d+) per replica from this nginx \(of (\d+)\)", log)]
        return found


def have_image(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def lab_missing() -> str | None:
    """Why the lab cannot run here, or None."""
    for name, official in (("DIND_IMAGE", "docker:dind"), ("REGISTRY_IMAGE", "registry:2"),
                           ("HAPROXY_IMAGE", "haproxy:3.0")):
        image = offline_image(name, official)
        if not have_image(image):
            return f"no {image} image: run scripts/offline-images.sh (or docker pull {official})"
    if os.geteuid() != 0:
        return "the lab's engines need root on the host"
    return None
