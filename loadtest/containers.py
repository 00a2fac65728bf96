"""What a replica's container and settings cost a flip: one replica as compose.yaml runs it,
beside the same replica with one thing changed, each in a compose project of its own.

    python -m loadtest.containers [--rounds N] [--flips N]

Variants: as compose.yaml runs it (the image's jemalloc, a bridge network, Docker's seccomp
profile, its memory limit); with glibc's malloc instead, tuned for a replica (loadtest.memory's
GLIBC_TUNED); on the host's network (no veth, no bridge); without a seccomp
filter; and on a bridge network of 65,520-byte frames (loopback's size) instead of Ethernet's
1,500. Round by round, in a rotating order so that machine noise hits all alike, each replica
gets one client posting the sample --flips times on each JPEG path (lossless and re-encoded)
after a first; its container's CPU and page faults (its cgroup's, so everything the request
costs in it) are read around them. Then the flip alone, `service.imaging.flip` in a process started in the first
replica's container. Healthchecks are off for the run: each is a `docker exec` of about 0.2
CPU-seconds, which lands in a round or not and would be most of the spread. Prints the medians,
the ratios and the page faults per flip.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

from harness import wait_for
from harness.compose import Stack, build_images, check_docker, run
from harness.usage import container_faults, container_seconds
from loadtest import flip_cpu
from loadtest.memory import GLIBC_TUNED
from loadtest.overhead import post_flip
from service.sample import make_sample

PATHS = ("lossless", "re-encoded")
AS_COMPOSE = "as compose.yaml runs it"
# Each variant: what its override file adds to compose.yaml's `web` (and networks; compose adds
# list items such as security_opt to compose.yaml's), beyond the healthcheck turned off in all.
# {port} is a free port of the host, for the host network.
VARIANTS: dict[str, dict] = {
    AS_COMPOSE: {},
    "glibc, tuned": {"services": {"web": {"environment": {"LD_PRELOAD": "", **GLIBC_TUNED}}}},
    "host network": {"services": {"web": {"network_mode": "host", "environment": {"PORT": "{port}"}}}},
    "no seccomp filter": {"services": {"web": {"security_opt": ["seccomp=unconfined"]}}},
    "65,520-byte frames": {"networks": {"default": {"driver_opts": {"com.docker.network.driver.mtu": "65520"}}}},
}
# Run in the replica's container, as its source: the image has no loadtest package.
FLIP_ALONE = Path(flip_cpu.__file__).read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def override(variant: dict, port: int) -> dict:
    """The compose override of a variant: its own settings, healthchecks off."""
    layered = json.loads(json.dumps(variant).replace("{port}", str(port)))
    layered.setdefault("services", {}).setdefault("web", {})["healthcheck"] = {"disable": True}
    return layered


class Replica:
    """One replica started by compose with a variant's override, and a client connected to it."""

    def __init__(self, name: str, variant: dict, directory: Path):
        port = free_port()
        path = directory / f"{len(list(directory.iterdir()))}.yaml"
        path.write_text(json.dumps(override(variant, port)))  # JSON is YAML
        self.name = name
        self.stack = Stack("containers", path, WEB_REPLICAS="1")
        try:
            self._start(port)
        except BaseException:
            self.stack.down()
            raise
        self.connection = http.client.HTTPConnection(*self.address, timeout=120)

    def _start(self, port: int) -> None:
        self.stack.compose("up", "-d", "--no-build", "--no-deps", "web", timeout=180)
        self.container = self.stack.container_ids("web")[0]
        networks = json.loads(self.stack.inspect(self.container, "{{json .NetworkSettings.Networks}}"))
        on_host = "host" in networks
        self.address = ("127.0.0.1", port) if on_host else (next(iter(networks.values()))["IPAddress"], 8000)
        if not wait_for(self._answers, timeout=60, interval=0.2):
            raise RuntimeError(f"replica '{self.name}' does not answer on {self.address}:\n"
                               f"{self.stack.logs('web')[-2000:]}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=1):
                return True
        except OSError:
            return False

    def cpu_per_flip(self, data: bytes, path: str, flips: int) -> tuple[float, float]:
        """The container's CPU seconds and page faults per POST /flip on `path`, over `flips`
        after a first."""
        post_flip(self.connection, data, path)
        before, faults = container_seconds(self.container), container_faults(self.container)
        for _ in range(flips):
            post_flip(self.connection, data, path)
        time.sleep(0.2)  # what the app's thread does after the last answer is sent
        return ((container_seconds(self.container) - before) / flips,
                (container_faults(self.container) - faults) / flips)

    def flip_alone(self, path: str) -> float:
        """CPU seconds of the flip alone on `path`, in a new process in this container."""
        done = run(["docker", "exec", self.container, "python", "-c", FLIP_ALONE, path], timeout=300)
        return float(done.stdout.split()[-1])

    def close(self) -> None:
        self.connection.close()
        self.stack.down()


def compare(rounds: int, flips: int) -> dict[str, dict[str, float]]:
    """Median CPU seconds per flip, by variant (and 'the flip alone') and path; and the median page
    faults per flip, by variant and path, under "faults"."""
    build_images("web")
    data = make_sample()
    spent = {name: {path: [] for path in PATHS} for name in VARIANTS}
    faulted = {name: {path: [] for path in PATHS} for name in VARIANTS}
    replicas: list[Replica] = []
    with tempfile.TemporaryDirectory() as directory:
        try:
            for name, variant in VARIANTS.items():
                replicas.append(Replica(name, variant, Path(directory)))
            for round_number in range(rounds):
                shift = round_number % len(replicas)
                for replica in replicas[shift:] + replicas[:shift]:
                    for path in PATHS:
                        cpu, faults = replica.cpu_per_flip(data, path, flips)
                        spent[replica.name][path].append(cpu)
                        faulted[replica.name][path].append(faults)
            alone = {path: replicas[0].flip_alone(path) for path in PATHS}
        finally:
            for replica in replicas:
                replica.close()
    return {"the flip alone": alone,
            **{name: {path: statistics.median(values) for path, values in by_path.items()}
               for name, by_path in spent.items()},
            "faults": {name: {path: statistics.median(values) for path, values in by_path.items()}
                       for name, by_path in faulted.items()}}


def report(medians: dict[str, dict[str, float]], rounds: int, flips: int) -> str:
    lines = [f"CPU per flip of the sample in one replica, by what runs it (medians of {rounds} rounds, "
             f"{flips} flips each after a first; healthchecks off)"]
    alone, base = medians["the flip alone"], medians[AS_COMPOSE]
    for path in PATHS:
        lines.append(f"{path}: the flip alone in the replica's container {alone[path] * 1000:6.1f} ms")
        for name in VARIANTS:
            value = medians[name][path]
            lines.append(f"  {name:<26} {value * 1000:6.1f} ms   x{value / alone[path]:.3f} of the flip alone"
                         f"   x{value / base[path]:.3f} of {AS_COMPOSE}"
                         f"   {medians['faults'][name][path]:8,.0f} page faults a flip")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--flips", type=int, default=4, help="POST /flip per replica, path and round, after a first")
    args = parser.parse_args(argv)
    check_docker()
    print(report(compare(args.rounds, args.flips), args.rounds, args.flips))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
