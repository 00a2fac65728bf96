"""The files that repeat a value are generated from its one home (scripts/generate.py), and current:
a change of a default, a limit or a setting is one edit and one regenerate command."""

import re
import subprocess
import sys

import yaml

from harness import ROOT, copy_tree

GENERATE = ROOT / "scripts" / "generate.py"


def test_the_generated_files_are_current():
    done = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_default_is_carried_everywhere(tmp_path):
    """In a copy of the tree: a new FLIP_QUEUE default and web memory limit, one regenerate."""
    copy = copy_tree(tmp_path / "tree")
    defaults = copy / "service" / "defaults.env"
    defaults.write_text(re.sub(r"^FLIP_QUEUE=\d+$", "FLIP_QUEUE=17", defaults.read_text(), flags=re.MULTILINE))
    compose = copy / "compose.yaml"
    text = compose.read_text()
    old_limit = text.split("${WEB_MEMORY_LIMIT:-", 1)[1].split("}", 1)[0]
    compose.write_text(text.replace(f"${{WEB_MEMORY_LIMIT:-{old_limit}}}", "${WEB_MEMORY_LIMIT:-3g}"))
    generate = copy / "scripts" / "generate.py"
    assert subprocess.run([sys.executable, str(generate), "--check"], capture_output=True, timeout=60).returncode == 1
    subprocess.run([sys.executable, str(generate)], check=True, capture_output=True, timeout=60)
    stack = yaml.safe_load((copy / "deploy" / "swarm" / "stack.yaml").read_text())
    assert stack["services"]["web"]["deploy"]["resources"]["limits"]["memory"] == "${WEB_MEMORY_LIMIT:-3g}"
    values = yaml.safe_load((copy / "deploy" / "k8s" / "base" / "stack-values.yaml").read_text())
    assert values["spec"]["webMemoryLimit"] == "3Gi"
    assert "| `FLIP_QUEUE` | `17` |" in (copy / "docs" / "settings.md").read_text()
    assert subprocess.run([sys.executable, str(generate), "--check"], capture_output=True, timeout=60).returncode == 0
