"""What each part of the system uses: CPU seconds (read from /proc and the containers' cgroups
before and after a load run, so that a benchmark can show where the time goes) and a
container's memory."""

from __future__ import annotations

import os
import resource
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# Host processes by their command name; their children's time (runc for each `docker exec`
# healthcheck) is counted once they have been waited for.
ENGINE = {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc"}
PROXY = {"docker-proxy"}


def _proc_times() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds including waited-for children)."""
    times = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            times[int(entry.name)] = _stat_times((entry / "stat").read_text())
        except OSError:
            continue  # the process ended while we looked
    return times


def process_seconds(pid: int) -> float:
    """A process's CPU seconds so far, including its waited-for children's."""
    return _stat_times(Path(f"/proc/{pid}/stat").read_text())[1]


def _stat_times(raw: str) -> tuple[str, float]:
    """A /proc/<pid>/stat line: (command name, CPU seconds including waited-for children)."""
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime: fields 14-17 of stat(5)
    return name, sum(int(v) for v in fields[11:15]) / TICKS


def container_seconds(container_id: str) -> float | None:
    """A container's CPU seconds from its cgroup (v1 cpuacct or v2 cpu.stat)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    for v2 in (
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
        Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
    ):
        if v2.is_file():
            for line in v2.read_text().splitlines():
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) / 1e6
    return None


def container_faults(container_id: str) -> int | None:
    """A container's page faults so far (minor and major), from its memory cgroup's memory.stat."""
    stat = _cgroup_file(container_id, "memory.stat", "memory.stat")
    if stat is None:
        return None
    values = dict(line.split() for line in stat.read_text().splitlines())
    found = values.get("total_pgfault", values.get("pgfault"))
    return None if found is None else int(found)


def snapshot(containers: dict[str, list[str]]) -> dict:
    """CPU seconds so far, by part: each compose service (its containers summed), the Docker
    engine, docker-proxy, and this process with the children it has waited for (the load
    generator: locust runs as a child, the burst's clients as threads here)."""
    totals: dict[str, float] = {}
    for service, ids in containers.items():
        seconds = [container_seconds(cid) for cid in ids]
        if all(s is not None for s in seconds):
            totals[service] = sum(seconds)
    times = _proc_times()
    # Per process: one that ends between two snapshots (each healthcheck's runc) takes its time
    # with it, which a plain sum would count as negative.
    for part, names in (("docker engine", ENGINE), ("docker-proxy", PROXY)):
        totals[part] = {pid: cpu for pid, (name, cpu) in times.items() if name in names}
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["load generator"] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return totals


def difference(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds used between two snapshots, by part (processes that ended meanwhile not counted)."""
    used = {}
    for part, value in after.items():
        if part not in before:
            continue
        if isinstance(value, dict):
            used[part] = round(sum(max(0.0, cpu - before[part].get(pid, 0.0)) for pid, cpu in value.items()), 2)
        else:
            used[part] = round(value - before[part], 2)
    return used


def _cgroup_file(container_id: str, v1_name: str, v2_name: str) -> Path | None:
    for path in (
        Path(f"/sys/fs/cgroup/memory/docker/{container_id}/{v1_name}"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/{v2_name}"),
        Path(f"/sys/fs/cgroup/docker/{container_id}/{v2_name}"),
    ):
        if path.is_file():
            return path
    return None


def memory(container_id: str) -> dict[str, int]:
    """A container's memory in bytes: `anon` (its processes' own pages, what grows when a
    service leaks), `usage` (all charged to it, page cache and tmpfs included) and, where the
    kernel keeps it, `peak` usage since the container started."""
    found: dict[str, int] = {}
    stat = _cgroup_file(container_id, "memory.stat", "memory.stat")
    if stat is None:
        raise FileNotFoundError(f"no memory cgroup found for container {container_id}")
    values = dict(line.split() for line in stat.read_text().splitlines())
    found["anon"] = int(values.get("total_rss", values.get("anon", 0)))
    for key, v1_name, v2_name in (("usage", "memory.usage_in_bytes", "memory.current"),
                                  ("peak", "memory.max_usage_in_bytes", "memory.peak")):
        path = _cgroup_file(container_id, v1_name, v2_name)
        if path is not None:
            found[key] = int(path.read_text())
    return found
