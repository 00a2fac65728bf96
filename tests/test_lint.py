"""No lint: ruff (configured in pyproject.toml) over the Python, shellcheck over every shell script."""

import subprocess
import sys
from pathlib import Path

from harness import ROOT

BIN = Path(sys.executable).parent


def shell_scripts() -> list[str]:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    return [name for name in tracked if name.endswith(".sh") or name == ".ci/run"]


def test_python_has_no_lint():
    done = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_scripts_have_no_lint():
    scripts = shell_scripts()
    assert "nginx/entrypoint.sh" in scripts and "scripts/up.sh" in scripts
    done = subprocess.run([str(BIN / "shellcheck"), *scripts], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
