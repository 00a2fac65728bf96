"""Drive the compose stack for the end-to-end tests and the benchmark: a real Docker engine, a project
name of its own, nginx published on an ephemeral 127.0.0.1 port read back from Docker, always torn down."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import requests

from harness import ROOT, wait_for

UP_TIMEOUT_S = 180
# Flip clients that start this much later than asked are not running together.
FLIP_CLIENT_LATE_S = 1.0
# nginx's log_format flipfleet (nginx/nginx.conf.template).
NGINX_ACCESS = re.compile(
    r'rid=(?P<rid>\S+) "(?P<request>[^"]*)" (?P<status>\d{3}) \d+ upstream=(?P<upstreams>.*?) '
    r"upstream_status=(?P<upstream_statuses>.*?) upstream_time=(?P<upstream_times>.*?) "
    r"upstream_sent=(?P<upstream_sent>.*?) time="
)
# nginx separates the tries of one pass by ", " and a second pass (an error_page's) by " : ".
TRIES = re.compile(r", | : ")


SIZE = re.compile(r"(\d+)([kmg]?)(i?)b?", re.IGNORECASE)


def size(text: str) -> int:
    """Bytes in a size as compose or Kubernetes write it: 768m, 1g, 1536Mi, 64Mi."""
    number, unit, _, = SIZE.fullmatch(text).groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


def compose_default(variable: str) -> str:
    """The default compose.yaml gives `variable` (${VARIABLE:-default}), the first if several."""
    match = re.search(rf"\$\{{{variable}:?-([^}}]*)\}}", (ROOT / "compose.yaml").read_text())
    if match is None:
        raise KeyError(f"compose.yaml gives {variable} no default")
    return match.group(1)


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


def offline_image(name: str, official: str) -> str:
    """The image that the env file names NAME (a local stand-in), else the official one."""
    path = env_file()
    if path and path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1].strip()
    return official


def compose_base(project: str | None = None, overrides: tuple[Path, ...] = ()) -> list[str]:
    """`docker compose` with the env file, the project name, and compose.yaml plus `overrides`.
    Always an env file: the .env that scripts/up.sh writes must not reach a test's stack."""
    command = ["docker", "compose", "--env-file", str(env_file() or os.devnull)]
    if project:
        command += ["-p", project]
    if overrides:
        command += ["-f", str(ROOT / "compose.yaml"), *(arg for path in overrides for arg in ("-f", str(path)))]
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


def _options(options: dict) -> list[str]:
    """--key value for each, --key alone for True, nothing for False."""
    return [arg for key, value in options.items() if value is not False
            for arg in ((f"--{key}",) if value is True else (f"--{key}", str(value)))]


# Every test stack's project name: the prefix, the pid of the process that made it, a label.
PROJECT_PREFIX = "fftest-"


def sweep_stale_stacks() -> list[str]:
    """Take down the stacks of test runs that ended without tearing them down (killed): those
    whose process is gone. A running process's stacks are left alone. The projects removed."""
    listed = run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format",
                  '{{.Label "com.docker.compose.project"}}'], check=False).stdout.split()
    stacks = run(["docker", "stack", "ls", "--format", "{{.Name}}"], check=False).stdout.split()
    removed = []
    for stack in stacks:
        owner = re.match(rf"{PROJECT_PREFIX}(\d+)-", stack)
        if owner and not Path(f"/proc/{owner.group(1)}").exists():
            run(["docker", "stack", "rm", stack], timeout=120, check=False)
            removed.append(stack)
    for project in sorted(set(listed)):
        owner = re.match(rf"{PROJECT_PREFIX}(\d+)-", project)
        if owner and not Path(f"/proc/{owner.group(1)}").exists():
            run(["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "--timeout", "1"],
                timeout=120, check=False)
            removed.append(project)
    return removed


def nginx_trouble(log: str) -> list[str]:
    """nginx's warnings, errors and non-2xx answers among the lines of its log."""
    return [line for line in log.splitlines()
            if "[warn]" in line or "[error]" in line or "[crit]" in line or re.search(r'" [3-5]\d\d ', line)]


class Stack:
    """One compose project: nginx on 127.0.0.1:<ephemeral port> in front of the `web` replicas;
    `overrides` are compose files layered over compose.yaml. With `ca` (the CA that signed
    FLIP_TLS_CERT), nginx is reached over HTTPS and its certificate checked against it."""

    def __init__(self, label: str, *overrides: Path, ca: Path | None = None, **env: str):
        self.project = f"{PROJECT_PREFIX}{os.getpid()}-{label}-{secrets.token_hex(3)}"
        self.overrides = overrides
        # An empty FLIP_PORT publishes nginx on an ephemeral port of 127.0.0.1 (compose.yaml).
        self.env = {"FLIP_PORT": "", "FLIP_BIND": "127.0.0.1", **env}
        self.port = 0
        self.verify: str | bool = str(ca) if ca else True

    @property
    def url(self) -> str:
        return f"{'https' if self.verify is not True else 'http'}://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 120, check: bool = True):
        return run(compose_base(self.project, self.overrides) + list(args), timeout=timeout, env=self.env,
                   check=check)

    def up(self, replicas: int, *extra: str) -> None:
        """Start `replicas` replicas (WEB_REPLICAS, so that nginx admits for as many) and nginx;
        back once the replicas are healthy and nginx answers (and a profile's services are healthy)."""
        self.env["WEB_REPLICAS"] = str(replicas)
        wait = ("--wait", "--wait-timeout", str(UP_TIMEOUT_S))
        self.compose("up", "-d", "--no-build", *wait, *extra, "web", timeout=UP_TIMEOUT_S + 60)
        # nginx answering is enough: Docker's first healthcheck of it would take one more interval.
        profiles = {**os.environ, **self.env}.get("COMPOSE_PROFILES")
        self.compose("up", "-d", "--no-build", *(wait if profiles else ()), *extra, timeout=UP_TIMEOUT_S + 60)
        if not self.wait_for_nginx(interval=0.2):
            raise RuntimeError(f"nginx does not answer on {self.url}:\n{self.logs('nginx')[-2000:]}")

    def compose_options(self) -> list[str]:
        """The options that address this project, for commands that take them (scripts/rollout.sh)."""
        return compose_base(self.project, self.overrides)[2:]

    def published_port(self, service: str, port: int) -> int:
        """The host port Docker gave `service`'s `port` (read again after a restart: it may change)."""
        address = self.compose("port", service, str(port)).stdout.strip()
        return int(address.rsplit(":", 1)[1])

    def wait_for_nginx(self, timeout: float = 30, interval: float = 0.5) -> bool:
        """Whether nginx answers on its published port (looked up again each try) within `timeout` s."""
        def answering() -> bool:
            try:
                self.port = self.published_port("nginx", 8080)
            except RuntimeError:
                return False  # not running yet
            return self.answers("/nginx-health", timeout=1)

        return wait_for(answering, timeout=timeout, interval=interval)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=120, check=False)

    def answers(self, path: str = "/", timeout: float = 2) -> bool:
        """Whether GET `path` through nginx answers 200 now."""
        try:
            return requests.get(self.url + path, timeout=timeout, verify=self.verify).status_code == 200
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

    def nginx_requests(self) -> list[dict]:
        """nginx's access log, a dict per request: request, status, and the replicas tried in order
        (`upstreams`, `upstream_statuses`, `upstream_times`, `upstream_sent`: one entry per replica
        tried, over both passes of a request nginx tried again after its own 502 or 504; `passes`
        counts them), and `sent_to`: the replicas of the tries that sent the request (not a failed connect)."""
        found = []
        for match in NGINX_ACCESS.finditer(self.logs("nginx")):
            entry = match.groupdict()
            entry["status"] = int(entry["status"])
            entry["passes"] = entry["upstream_statuses"].count(" : ") + 1
            entry["upstreams"] = TRIES.split(entry["upstreams"])
            entry["upstream_statuses"] = TRIES.split(entry["upstream_statuses"])
            entry["upstream_times"] = [float(t) if t != "-" else None for t in TRIES.split(entry["upstream_times"])]
            entry["upstream_sent"] = [int(b) if b != "-" else 0 for b in TRIES.split(entry["upstream_sent"])]
            tries = zip(entry["upstreams"], entry["upstream_sent"], strict=True)
            entry["sent_to"] = [address for address, sent in tries if sent > 0]
            found.append(entry)
        return found

    def flip_clients(self, *clients: dict, seconds: float, start_in: float = 3) -> list[dict]:
        """Run one harness.flipclient container per entry of `clients` (its options: connections, size,
        impatient; `cpus`, the container's CPU bound) at once on the stack's network, each with an
        address of its own; what each got. They start
        flipping together, `start_in` seconds from now (time for the containers to start; a client
        that starts later than that by more than FLIP_CLIENT_LATE_S fails the call)."""
        start_at = time.time() + start_in
        started = [subprocess.Popen(
            ["docker", "run", "--rm", "--network", f"{self.project}_default", "--memory", "512m",
             "--pids-limit", "256", *(("--cpus", str(client["cpus"])) if "cpus" in client else ()),
             "-v", f"{ROOT / 'harness'}:/src/harness:ro", "-e", "PYTHONPATH=/src",
             "flipfleet-web:latest", "python", "-m", "harness.flipclient", "http://nginx:8080",
             "--seconds", str(seconds), "--start-at", str(start_at),
             *_options({key: value for key, value in client.items() if key != "cpus"})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for client in clients]
        found = []
        for process in started:
            out, err = process.communicate(timeout=seconds + 240)
            if process.returncode != 0:
                raise RuntimeError(f"a flip client failed ({process.returncode}):\n{err[-2000:]}")
            found.append(json.loads(out))
        late = [each["late_s"] for each in found if each["late_s"] > FLIP_CLIENT_LATE_S]
        if late:
            raise RuntimeError(f"flip clients started {late} s late, so not together: give them a longer start_in")
        return found

    def replica_names(self, requests_count: int) -> list[str]:
        """The replica that answered each of `requests_count` GET / through nginx."""
        names = []
        for _ in range(requests_count):
            response = requests.get(self.url + "/", timeout=10)
            response.raise_for_status()
            names.append(response.headers["X-Served-By"])
        return names


class Stacks:
    """The stacks a test (or a module) brought up: torn down at its end, logs shown on failure."""

    def __init__(self, label: str):
        self.label = label[:14].replace("_", "-")
        self.started: list[Stack] = []

    def __call__(self, replicas: int, *overrides: Path, ca: Path | None = None, **env: str) -> Stack:
        """Bring up a stack of `replicas` web replicas, with compose files `overrides` layered
        over compose.yaml and compose variables `env` (`ca`: reached over HTTPS, as Stack says)."""
        # Frequent healthchecks: the stack is healthy sooner, at a CPU cost no test measures.
        new = Stack(self.label, *overrides, ca=ca, **{"HEALTH_INTERVAL": "2s", **env})
        self.started.append(new)
        new.up(replicas)
        return new

    def tear_down(self, failed: bool) -> None:
        for each in self.started:
            try:
                if failed:
                    print(_what_went_wrong(each))
            finally:
                each.down()


def _what_went_wrong(stack: Stack) -> str:
    """nginx's warnings, errors and non-2xx answers, then the last lines of the replicas' logs."""
    nginx = nginx_trouble(stack.logs("nginx"))
    return "\n".join(["nginx:", *nginx[-150:], "web:", *stack.logs("web").splitlines()[-60:]])
