"""Helpers shared by the nginx tests: nginx/entrypoint.sh run as a stack runs it, the config it
renders, and an API keys file for it to read."""

import re
import subprocess
from pathlib import Path

from harness import ROOT
from service.config import DEFAULTS_FILE

ENTRYPOINT = ROOT / "nginx" / "entrypoint.sh"

GOOD_KEY = "k3y-of-alice.0123456789+/="
OTHER_KEY = "bob-key_ABCDEFGHIJ0123"
KEYS = f"# who  key\nalice {GOOD_KEY}\n\nbob   {OTHER_KEY}   # a comment\n"


def entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    """nginx/entrypoint.sh with these arguments and environment variables (and a stack's own)."""
    environ = {"PATH": "/usr/bin:/bin", "FLIPFLEET_DEFAULTS": str(DEFAULTS_FILE), "FLIP_UPSTREAM": "web:8000",
               "NGINX_RESOLVER": "127.0.0.11", "WEB_REPLICAS": "2", **env}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=30)


def render(tmp_path: Path, **env: str) -> tuple[str, str]:
    """The rendered config and what the entrypoint logged, for these environment variables."""
    out = tmp_path / "nginx.conf"
    result = entrypoint("--render-only", NGINX_CONF=str(out), **env)
    assert result.returncode == 0, result.stderr
    return out.read_text(), result.stderr


def directive(conf: str, name: str) -> list[str]:
    """The arguments of every `name ...;` line."""
    return [match.strip() for match in re.findall(rf"^\s*{name}\s+([^;]*);", conf, re.MULTILINE)]


def keys_file(tmp_path: Path, text: str = KEYS) -> Path:
    """An API keys file in `tmp_path` holding `text` (alice's and bob's keys unless told)."""
    path = tmp_path / "api-keys"
    path.write_text(text)
    path.chmod(0o644)  # nginx runs as an unprivileged user
    return path
