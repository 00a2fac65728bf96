"""Secure defaults of the running stack: users, capabilities, a read-only root, published ports,
the headers on every answer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.docker


def _process_uids(container: str) -> set[int]:
    """The real uids of every process in the container, read from the host's /proc."""
    table = subprocess.run(["docker", "top", container], capture_output=True, text=True, check=True,
                           timeout=30).stdout
    header, *rows = table.splitlines()
    pid_column = header.split().index("PID")
    uids = set()
    for row in rows:
        pid = row.split()[pid_column]
        status = Path(f"/proc/{pid}/status").read_text()
        uids.add(int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]))
    assert uids, table
    return uids


def test_secure_defaults(stack):
    flipfleet = stack(1)
    for service in ("web", "nginx"):
        (container,) = flipfleet.container_ids(service)
        assert flipfleet.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        assert flipfleet.inspect(container, "{{json .HostConfig.CapDrop}}") in ('["ALL"]', '["all"]')
        assert "no-new-privileges" in flipfleet.inspect(container, "{{json .HostConfig.SecurityOpt}}")
        user = flipfleet.inspect(container, "{{.Config.User}}")
        assert user and user.split(":")[0] not in ("0", "root")
        assert _process_uids(container) - {0} == _process_uids(container), f"{service} runs a process as root"
    (web,) = flipfleet.container_ids("web")
    assert flipfleet.inspect(web, "{{json .HostConfig.PortBindings}}") in ("{}", "null")
    (nginx,) = flipfleet.container_ids("nginx")
    bindings = flipfleet.inspect(nginx, "{{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostIp}} "
                                        "{{end}}{{end}}")
    assert bindings.split() == ["127.0.0.1"]

    answer = requests.get(flipfleet.url + "/", timeout=5)
    error = requests.get(flipfleet.url + "/nowhere", timeout=5)
    refused = requests.post(flipfleet.url + "/flip", data=b"\0" * (26 * 1024 * 1024), timeout=60)
    for response in (answer, error, refused):
        assert response.headers["Server"] == "nginx"  # no version
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert (error.status_code, refused.status_code) == (404, 413)
