"""loadtest.overhead's measure of one process under a glibc setting, as its comparison runs it."""

import os
import subprocess
import sys

import pytest

from harness import ROOT
from loadtest.memory import IMAGE_ENV
from loadtest.overhead import GLIBC_VARIANTS


def test_the_comparison_covers_the_image_and_glibc_defaults():
    assert GLIBC_VARIANTS["glibc's defaults"] == {} and GLIBC_VARIANTS["as the image runs it"] == IMAGE_ENV
    assert len({tuple(sorted(variant.items())) for variant in GLIBC_VARIANTS.values()}) == len(GLIBC_VARIANTS)


@pytest.mark.parametrize("path", ["lossless", "re-encoded"])
def test_a_process_prints_the_cpu_of_one_flip_of_the_sample(path):
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-of", path], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **GLIBC_VARIANTS["as the image runs it"]})
    assert done.returncode == 0, done.stderr
    # The sample is 24 MP: a flip takes a tenth of a second or more of CPU on any machine.
    assert 0.02 < float(done.stdout) < 30
