"""scripts/lib.sh's helpers on their own, and scripts/up.sh as a new user runs it, followed by the
README's next commands, as written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, copy_tree
from harness.compose import PROJECT_PREFIX, env_file, run


def bash(script: str, cwd: Path = ROOT, **env: str) -> str:
    """`script` run by bash with scripts/lib.sh sourced; its standard output."""
    done = subprocess.run(["bash", "-c", f". scripts/lib.sh; {script}"], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def fake_engine(tmp_path):
    """A `docker` that reports 8 CPUs and a dockerd (pid 4242) in a cgroup of the test's own."""
    bin_dir, proc, cgroups = tmp_path / "bin", tmp_path / "proc", tmp_path / "cgroup"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho 8\n")
    (bin_dir / "pgrep").write_text("#!/bin/sh\necho 4242\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (proc / "4242").mkdir(parents=True)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PROC_ROOT": str(proc), "CGROUP_ROOT": str(cgroups)}


@pytest.mark.parametrize(
    ("version", "files", "cpus"),
    [("v2", {"engine/cpu.max": "max 100000"}, 8),
     ("v2", {"engine/cpu.max": "250000 100000"}, 3),  # 2.5 CPUs: rounded up
     ("v1", {"cpu/engine/cpu.cfs_quota_us": "-1", "cpu/engine/cpu.cfs_period_us": "100000"}, 8),
     ("v1", {"cpu/engine/cpu.cfs_quota_us": "200000", "cpu/engine/cpu.cfs_period_us": "100000"}, 2),
     ("v2", {"engine/cpu.max": "1600000 100000"}, 8)],  # a quota above the machine's CPUs
    ids=["v2-no-quota", "v2-quota", "v1-no-quota", "v1-quota", "v2-quota-above"],
)
def test_the_cpus_the_engine_can_use(fake_engine, version, files, cpus):
    cgroup_line = "0::/engine\n" if version == "v2" else "4:cpu,cpuacct:/engine\n3:memory:/engine\n"
    (Path(fake_engine["PROC_ROOT"]) / "4242" / "cgroup").write_text(cgroup_line)
    for name, text in files.items():
        path = Path(fake_engine["CGROUP_ROOT"]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    assert bash("engine_cpus", **fake_engine).strip() == str(cpus)


def test_nginx_memory_follows_the_replicas():
    sizes = [int(bash(f"nginx_memory_for {replicas}").strip().removesuffix("m")) for replicas in (1, 2, 4, 16)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4 and all(size % 64 == 0 for size in sizes)
    # What the entrypoint then admits under that limit: every place in the replicas' queues.
    for replicas, size in zip((1, 2, 4, 16), sizes, strict=True):
        plan = bash(f"FLIPFLEET_DEFAULTS=service/defaults.env FLIP_UPSTREAM=web:8000 NGINX_RESOLVER=127.0.0.11 "
                    f"WEB_REPLICAS={replicas} NGINX_MEMORY_BYTES={size << 20} bash nginx/entrypoint.sh --plan")
        values = dict(line.split("=", 1) for line in plan.split())
        assert int(values["NEEDED_AFTER_RELOAD_BYTES"]) <= size << 20


def test_remember_keeps_the_users_own_lines(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "lib.sh").write_text((ROOT / "scripts" / "lib.sh").read_text())
    (tmp_path / ".env").write_text("FLIP_PORT=9000\nWEB_REPLICAS=3\n")
    bash("remember WEB_REPLICAS=4 NGINX_MEMORY_LIMIT=1g", cwd=tmp_path)
    bash("remember WEB_REPLICAS=5", cwd=tmp_path)  # a second run replaces its own block only
    lines = (tmp_path / ".env").read_text().splitlines()
    assert lines[:2] == ["FLIP_PORT=9000", "WEB_REPLICAS=3"] and lines[3] == "WEB_REPLICAS=5" and len(lines) == 5
    assert bash("remembered WEB_REPLICAS", cwd=tmp_path) == "3"  # the user's, not the block's
    assert bash("remembered NGINX_MEMORY_LIMIT", cwd=tmp_path) == ""


@pytest.mark.docker
def test_up_then_the_readme_commands_as_written(docker_images, tmp_path):
    """A copy of the tree; scripts/up.sh; then plain `docker compose` commands, no env file named."""
    copy = copy_tree(tmp_path / "tree")
    if env_file():  # where no registry answers: the stand-ins this machine already has
        (copy / ".env.offline").write_text(env_file().read_text())
    project = f"{PROJECT_PREFIX}{os.getpid()}-up"
    environ = {**os.environ, "COMPOSE_PROJECT_NAME": project, "FLIP_PORT": "", "HEALTH_INTERVAL": "2s"}
    for name in ("WEB_REPLICAS", "NGINX_MEMORY_LIMIT"):
        environ.pop(name, None)

    def sh(*command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=copy, env=environ, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    def replicas() -> int:
        return len(sh("docker", "compose", "ps", "-q", "web").stdout.split())

    try:
        up = sh("bash", "scripts/up.sh")
        cpus = bash("engine_cpus").strip()
        assert f"one replica per CPU the engine can use: {cpus}" in up.stderr
        assert replicas() == int(cpus)
        assert f"WEB_REPLICAS={cpus}" in (copy / ".env").read_text()
        # The README's next commands, as written: no --env-file, no registry.
        sh("docker", "compose", "up", "-d", "--scale", "web=4", "--wait")
        assert replicas() == 4
        sh("docker", "compose", "--profile", "monitoring", "up", "-d", "--wait")
        assert replicas() == int(cpus)  # a plain `up` goes back to WEB_REPLICAS, as the README says
        port = sh("docker", "compose", "port", "nginx", "8080").stdout.strip().rsplit(":", 1)[1]
        answer = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                      f"http://127.0.0.1:{port}/flip"], timeout=60)
        assert answer.stdout == "200"
    finally:
        subprocess.run(["docker", "compose", "--profile", "monitoring", "down", "-v", "--timeout", "5"], cwd=copy,
                       env=environ, capture_output=True, timeout=180)
