"""Drive the compose stack for the end-to-end tests and the benchmark: a real Docker engine, a project
name of its own, nginx published on a free 127.0.0.1 port, always torn down."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

import requests

from loadtest.local import wait_for

ROOT = Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 180


class DockerUnavailable(RuntimeError):
    """No Docker engine or no Compose v2 answers on this machine."""


def check_docker() -> str:
    """The engine and Compose versions; raises DockerUnavailable saying what is missing."""
    checks = {
        "engine": ["docker", "version", "--format", "{{.Server.Version}}"],
        "compose": ["docker", "compose", "version", "--short"],
    }
    found = {}
    for what, command in checks.items():
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DockerUnavailable(f"`{' '.join(command)}` failed: {exc}") from exc
        if result.returncode != 0:
            raise DockerUnavailable(
                f"no Docker {what} answers (`{' '.join(command)}`: {result.stderr.strip()[:300]}); "
                "run scripts/docker-engine.sh"
            )
        found[what] = result.stdout.strip()
    return f"engine {found['engine']}, compose {found['compose']}"


def env_file() -> Path | None:
    """The env file naming the base images: $FLIPFLEET_ENV_FILE, else the one that
    scripts/offline-images.sh writes when it exists, else none (the official images)."""
    named = os.environ.get("FLIPFLEET_ENV_FILE")
    if named:
        return Path(named)
    offline = ROOT / ".env.offline"
    return offline if offline.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_base(project: str | None = None) -> list[str]:
    command = ["docker", "compose"]
    if env_file():
        command += ["--env-file", str(env_file())]
    if project:
        command += ["-p", project]
    return command


def build_images(*services: str) -> None:
    """Build once per session, so that each stack's `up` only starts containers."""
    run(compose_base() + ["--profile", "loadtest", "build", *services], timeout=1200)


def run(command: list[str], timeout: float = 120, env: dict | None = None, check: bool = True):
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


class Stack:
    """One compose project: nginx on 127.0.0.1:<free port> in front of the `web` replicas."""

    def __init__(self, label: str, **env: str):
        self.project = f"fftest-{label}-{secrets.token_hex(3)}"
        self.port = free_port()
        self.env = {"FLIP_PORT": str(self.port), "FLIP_BIND": "127.0.0.1", **env}
        self.url = f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 120, check: bool = True):
        return run(compose_base(self.project) + list(args), timeout=timeout, env=self.env, check=check)

    def up(self, replicas: int, *extra: str) -> None:
        self.compose(
            "up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
            "--scale", f"web={replicas}", *extra, timeout=UP_TIMEOUT_S + 60,
        )
        self.wait_for_nginx()

    def wait_for_nginx(self, timeout: float = 30) -> None:
        """Raise unless nginx answers on the published port within `timeout` seconds."""
        if not wait_for(lambda: self.answers("/nginx-health"), timeout=timeout, interval=0.5):
            raise RuntimeError(f"nginx does not answer on {self.url}:\n{self.logs('nginx')[-2000:]}")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=120, check=False)

    def answers(self, path: str = "/", timeout: float = 2) -> bool:
        """Whether GET `path` through nginx answers 200 now."""
        try:
            return requests.get(self.url + path, timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def container_ids(self, service: str = "web") -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "--format", template, container]).stdout.strip()

    def kill_process(self, container: str) -> int:
        """kill -9 the container's main process from the host, as a crash would: Docker
        restarts it, unlike `docker kill`, which counts as a manual stop."""
        pid = int(self.inspect(container, "{{.State.Pid}}"))
        os.kill(pid, 9)
        return pid

    def restart_count(self, container: str) -> int:
        return int(self.inspect(container, "{{.RestartCount}}"))

    def health(self, container: str) -> str:
        return self.inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout

    def replica_names(self, requests_count: int) -> list[str]:
        """The replica that answered each of `requests_count` GET / through nginx."""
        names = []
        for _ in range(requests_count):
            response = requests.get(self.url + "/", timeout=10)
            response.raise_for_status()
            names.append(response.headers["X-Served-By"])
        return names
