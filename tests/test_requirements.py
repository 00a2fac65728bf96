"""The images install from hashed locks; each lock must pin what its requirements files pin."""

import re

import pytest

from harness import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.MULTILINE)
# lock -> the requirements files it was compiled from (its own header names the command).
LOCKS = {
    "requirements.lock": ["requirements.txt"],
    "requirements-loadtest.lock": ["requirements.txt", "requirements-loadtest.txt"],
}


def pins(name: str) -> dict[str, str]:
    return {package.lower().replace("_", "-"): version for package, version in PIN.findall((ROOT / name).read_text())}


@pytest.mark.parametrize(("lock", "sources"), LOCKS.items())
def test_lock_pins_every_requirement_at_the_same_version(lock, sources):
    direct = {package: version for source in sources for package, version in pins(source).items()}
    locked = pins(lock)
    assert direct and {package: locked.get(package) for package in direct} == direct


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_has_a_hash(lock):
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", (ROOT / lock).read_text())
    packages = [block for block in blocks if PIN.match(block)]
    assert len(packages) == len(pins(lock))
    assert all("--hash=sha256:" in block for block in packages)


@pytest.mark.parametrize(("dockerfile", "lock"), [("Dockerfile", "requirements.lock"),
                                                    ("loadtest/Dockerfile", "requirements-loadtest.lock")])
def test_each_image_installs_its_lock_with_hashes_required(dockerfile, lock):
    text = (ROOT / dockerfile).read_text()
    assert f"COPY {lock} " in text and "--require-hashes" in text
