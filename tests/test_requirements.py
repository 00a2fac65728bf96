"""The image installs from requirements.lock (with hashes); it must pin what requirements.txt pins."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    return {package.lower(): version for package, version in PIN.findall((ROOT / name).read_text())}


def test_lock_pins_every_requirement_at_the_same_version():
    direct, locked = pins("requirements.txt"), pins("requirements.lock")
    assert direct and {package: locked.get(package) for package in direct} == direct


def test_every_locked_package_has_a_hash():
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", (ROOT / "requirements.lock").read_text())
    packages = [block for block in blocks if PIN.match(block)]
    assert len(packages) == len(pins("requirements.lock"))
    assert all("--hash=sha256:" in block for block in packages)
