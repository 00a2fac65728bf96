"""Docker Swarm for the tests: a stack on this engine through scripts/swarm-*.sh, and a lab of
three Docker engines in containers (docker-in-docker) that form a swarm of their own, with a
registry beside them. Names carry a prefix of their own; everything is removed at the end.
Load only ever goes to 127.0.0.1 ports published from the lab."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import wait_for
from harness.compose import PROJECT_PREFIX, offline_image, run

# What a docker-in-docker node needs without --privileged (which these machines refuse).
NODE_OPTIONS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
                "--security-opt", "apparmor=unconfined"]


class OneNodeStack:
    """The stack on this engine, as scripts/swarm-up.sh makes it, nginx on an ephemeral port."""

    def __init__(self, **env: str):
        self.name = f"{PROJECT_PREFIX}{os.getpid()}-swarm-{secrets.token_hex(3)}"
        self.env = {"FLIPFLEET_STACK": self.name, "FLIP_PORT": "", "FLIP_REGISTRY_PORT": "", **env}
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, name: str, *args: str, timeout: float = 600, check: bool = True, **env: str):
        return run(["bash", f"scripts/{name}", *args], timeout=timeout, env={**self.env, **env}, check=check)

    def up(self) -> None:
        self.script("swarm-up.sh")
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
    """Three Docker engines in containers on a network of their own, one manager and two workers,
    and a registry they pull from (the host pushes to it on 127.0.0.1)."""

    NODES = 3

    def __init__(self):
        self.prefix = f"fflab-{secrets.token_hex(3)}"
        self.network = f"{self.prefix}-net"
        self.registry_name = f"{self.prefix}-registry"
        self.nodes = [f"{self.prefix}-node{i}" for i in range(1, self.NODES + 1)]
        self.control = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.node_image = offline_image("DIND_IMAGE", "docker:dind")
        self.registry_image = offline_image("REGISTRY_IMAGE", "registry:2")
        self.nginx_port = 0

    # -- the lab -----------------------------------------------------------------------------

    def up(self) -> None:
        run(["docker", "network", "create", self.network])
        run(["docker", "run", "-d", "--name", self.registry_name, "--network", self.network,
             "-p", "127.0.0.1::5000", "-v", f"{self.registry_name}:/var/lib/registry", self.registry_image])
        for index, node in enumerate(self.nodes):
            manager = index == 0
            publish = ["-p", "127.0.0.1::8080", "-v", f"{self.control}:/control"] if manager else []
            listen = ["-H", "unix:///var/run/docker.sock", "-H", "unix:///control/docker.sock"] if manager else []
            run(["docker", "run", "-d", "--name", node, "--hostname", node, "--network", self.network,
                 *NODE_OPTIONS, "-v", f"{node}:/var/lib/docker", *publish, self.node_image,
                 "--insecure-registry", f"{self.registry_name}:5000", *listen])
        for node in self.nodes:
            if not wait_for(lambda node=node: self.on(node, "info", check=False).returncode == 0, timeout=60,
                            interval=0.5):
                logs = run(["docker", "logs", node], check=False).stderr[-2000:]
                raise RuntimeError(f"{node}'s engine did not start:\n{logs}")
        template = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        address = run(["docker", "inspect", "--format", template, self.nodes[0]]).stdout.strip()
        self.on(self.nodes[0], "swarm", "init", "--advertise-addr", address)
        token = self.on(self.nodes[0], "swarm", "join-token", "-q", "worker").stdout.strip()
        for node in self.nodes[1:]:
            self.on(node, "swarm", "join", "--token", token, f"{address}:2377")
        if not wait_for(lambda: self.ready_nodes() == self.NODES, timeout=60, interval=0.5):
            raise RuntimeError(f"the swarm has {self.ready_nodes()} Ready nodes, not {self.NODES}")
        self.nginx_port = int(run(["docker", "port", self.nodes[0], "8080/tcp"]).stdout.split()[0].rsplit(":", 1)[1])

    def down(self) -> None:
        run(["docker", "rm", "-f", "-v", *self.nodes, self.registry_name], check=False, timeout=120)
        run(["docker", "volume", "rm", *self.nodes, self.registry_name], check=False)
        run(["docker", "network", "rm", self.network], check=False)
        shutil.rmtree(self.control, ignore_errors=True)

    # -- talking to it -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def on(self, node: str, *args: str, check: bool = True, timeout: float = 120):
        """A docker command run by the engine inside `node`."""
        return run(["docker", "exec", node, "docker", *args], check=check, timeout=timeout)

    def manager(self, *args: str, check: bool = True, timeout: float = 300, **env: str):
        """A docker command (the host's client) against the manager, through its socket."""
        return run(["docker", *args], check=check, timeout=timeout,
                   env={"DOCKER_HOST": f"unix://{self.control}/docker.sock", **env})

    def ready_nodes(self) -> int:
        listed = self.on(self.nodes[0], "node", "ls", "--format", "{{.Status}}", check=False).stdout.split()
        return listed.count("Ready")

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

    def deploy(self, stack: str, **env: str) -> None:
        """scripts/swarm-deploy.sh against the manager, images from the lab's registry."""
        run(["bash", "scripts/swarm-deploy.sh", stack], timeout=600,
            env={"DOCKER_HOST": f"unix://{self.control}/docker.sock",
                 "FLIP_REGISTRY": f"{self.registry_name}:5000", **env})

    def tasks(self, service: str) -> list[dict]:
        return running_tasks(lambda *args: self.manager(*args), service)


def have_image(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def lab_missing() -> str | None:
    """Why the lab cannot run here, or None."""
    for name, official in (("DIND_IMAGE", "docker:dind"), ("REGISTRY_IMAGE", "registry:2")):
        image = offline_image(name, official)
        if not have_image(image):
            return f"no {image} image: run scripts/offline-images.sh (or docker pull {official})"
    if os.geteuid() != 0:
        return "the lab's engines need root on the host"
    return None
