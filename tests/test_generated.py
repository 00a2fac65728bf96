"""The files that repeat a value are generated from its one home (scripts/generate.py), and current:
a change of a default, a limit or a setting is one edit and one regenerate command."""

import re
import subprocess
import sys

import pytest
import yaml

from harness import ROOT, copy_tree
from loadtest.memory import IMAGE_ENV
from service import memory
from service.config import Settings

GENERATE = ROOT / "scripts" / "generate.py"


def test_the_generated_files_are_current():
    done = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_default_is_carried_everywhere(tmp_path):
    """In a copy of the tree: a new FLIP_QUEUE default, one regenerate; the replicas' memory limit,
    worked out from it, follows in compose, the Swarm stack and Kubernetes."""
    copy = copy_tree(tmp_path / "tree")
    defaults = copy / "service" / "defaults.env"
    defaults.write_text(re.sub(r"^FLIP_QUEUE=\d+$", "FLIP_QUEUE=17", defaults.read_text(), flags=re.MULTILINE))
    generate = copy / "scripts" / "generate.py"
    assert subprocess.run([sys.executable, str(generate), "--check"], capture_output=True, timeout=60).returncode == 1
    subprocess.run([sys.executable, str(generate)], check=True, capture_output=True, timeout=60)
    needed = memory.needed(Settings.from_env({"FLIP_QUEUE": "17"}), IMAGE_ENV)
    limit_mib = -(-needed // (64 * 2**20)) * 64
    assert needed <= limit_mib * 2**20 < needed + 64 * 2**20
    assert f"${{WEB_MEMORY_LIMIT:-{limit_mib}m}}" in (copy / "compose.yaml").read_text()
    stack = yaml.safe_load((copy / "deploy" / "swarm" / "stack.yaml").read_text())
    assert stack["services"]["web"]["deploy"]["resources"]["limits"]["memory"] == f"${{WEB_MEMORY_LIMIT:-{limit_mib}m}}"
    values = yaml.safe_load((copy / "deploy" / "k8s" / "base" / "stack-values.yaml").read_text())
    assert values["spec"]["webMemoryLimit"] == f"{limit_mib}Mi"
    assert "| `FLIP_QUEUE` | `17` |" in (copy / "docs" / "settings.md").read_text()
    assert "`FLIP_QUEUE` (17)" in (copy / "docs" / "operations.md").read_text()
    assert subprocess.run([sys.executable, str(generate), "--check"], capture_output=True, timeout=60).returncode == 0


# The tests that read the settings, the docs and the generated files.
READ_THE_SETTINGS = ["tests/test_docs.py", "tests/test_generated.py", "tests/test_config.py", "tests/test_memory.py",
                     "tests/test_k8s.py", "tests/test_nginx.py", "tests/test_server.py"]


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "change"), [("FLIP_QUEUE", 2), ("FLIP_MAX_BYTES", 5 * 2**20),
                                                 ("FLIP_MAX_PIXELS", -10_000_000)])
def test_a_default_changed_in_its_home_then_regenerated_leaves_the_suite_green(tmp_path, setting, change):
    # As a user would: one edit of service/defaults.env (the default moved by `change`, whatever it
    # is now), scripts/generate.py, the tests.
    copy = copy_tree(tmp_path / "tree")
    defaults = copy / "service" / "defaults.env"
    value = int(Settings.defaults()[setting]) + change
    assert value > 0
    defaults.write_text(re.sub(rf"^{setting}=.*$", f"{setting}={value}", defaults.read_text(), flags=re.MULTILINE))
    subprocess.run([sys.executable, "scripts/generate.py"], cwd=copy, check=True, capture_output=True, timeout=120)
    # A checkout of its own: some of those tests copy the tree as git lists it.
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True, timeout=60)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not docker", "-p", "no:cacheprovider",
                           "-k", "not leaves_the_suite_green", *READ_THE_SETTINGS],  # not this test again, inside
                          cwd=copy, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
