"""loadtest.overhead's measure of one process under a glibc setting, as its comparison runs it."""

import re
import subprocess
import sys

import pytest

from harness import ROOT
from loadtest.memory import GLIBC_PREFIXES, IMAGE_ENV, glibc_environment
from loadtest.overhead import GLIBC_VARIANTS


def test_the_comparison_covers_the_image_and_glibc_defaults():
    assert GLIBC_VARIANTS["glibc's defaults"] == {} and GLIBC_VARIANTS["as the image runs it"] == IMAGE_ENV
    assert len({tuple(sorted(variant.items())) for variant in GLIBC_VARIANTS.values()}) == len(GLIBC_VARIANTS)


def test_a_variant_runs_without_the_shells_own_glibc_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    assert {key for key in glibc_environment() if key.startswith(GLIBC_PREFIXES)} == set(IMAGE_ENV)
    assert glibc_environment() == {**glibc_environment({}), **IMAGE_ENV} and "PATH" in glibc_environment({})
    assert glibc_environment({"MALLOC_ARENA_MAX": "1"})["MALLOC_ARENA_MAX"] == "1"


@pytest.mark.parametrize("path", ["lossless", "re-encoded"])
def test_a_process_prints_the_cpu_of_one_flip_of_the_sample(path):
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-of", path], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=glibc_environment())
    assert done.returncode == 0, done.stderr
    # The sample is 24 MP: a flip takes a tenth of a second or more of CPU on any machine.
    assert 0.02 < float(done.stdout) < 30


def test_the_cpu_comparison_prints_both_paths_alone_and_through_the_service():
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-rounds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=glibc_environment())
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s+(lossless|re-encoded)\s+alone\s+([\d.]+) ms\s+POST /flip to the service\s+([\d.]+) ms\s+"
                      r"x([\d.]+)$", done.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["lossless", "re-encoded"], done.stdout
    for _, alone, served, ratio in rows:
        assert float(alone) > 0 and float(served) > 0
        assert float(ratio) == pytest.approx(float(served) / float(alone), abs=0.002)
