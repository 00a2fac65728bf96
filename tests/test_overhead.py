"""loadtest.overhead's measure of one process under an allocator, as its comparison runs it."""

import re
import subprocess
import sys

import pytest

from harness import ROOT
from loadtest.memory import ALLOCATOR_PREFIXES, IMAGE_ENV, VARIANTS, allocator_environment


def test_the_comparison_covers_the_image_and_glibc_defaults():
    assert VARIANTS["glibc's defaults"] == {} and VARIANTS["as the image runs it"] == IMAGE_ENV
    assert len({tuple(sorted(variant.items())) for variant in VARIANTS.values()}) == len(VARIANTS)


def test_a_variant_runs_without_the_shells_own_allocator_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
    monkeypatch.setenv("LD_PRELOAD", "libc_malloc_debug.so.0")
    assert {key for key in allocator_environment() if key.startswith(ALLOCATOR_PREFIXES)} == set(IMAGE_ENV)
    assert allocator_environment() == {**allocator_environment({}), **IMAGE_ENV}
    assert "PATH" in allocator_environment({}) and "LD_PRELOAD" not in allocator_environment({})
    assert allocator_environment({"MALLOC_ARENA_MAX": "1"})["MALLOC_ARENA_MAX"] == "1"


def test_a_local_process_runs_with_the_images_allocator(jemalloc):
    # jemalloc really loaded, and tuned by the image's MALLOC_CONF: the measures of loadtest.* rest on it.
    code = ("import ctypes; print([l.split()[-1] for l in open('/proc/self/maps') if 'jemalloc' in l][:1]);"
            "lib = ctypes.CDLL(None); n = ctypes.c_size_t(8); value = ctypes.c_ssize_t();"
            "lib.mallctl(b'opt.dirty_decay_ms', ctypes.byref(value), ctypes.byref(n), None, 0); print(value.value)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=allocator_environment())
    assert done.returncode == 0, done.stderr
    mapped, decay = done.stdout.split("\n")[:2]
    assert "libjemalloc.so.2" in mapped, done.stderr
    assert f"dirty_decay_ms:{decay}" in IMAGE_ENV["MALLOC_CONF"]


@pytest.mark.parametrize("path", ["lossless", "re-encoded"])
def test_a_process_prints_the_cpu_of_one_flip_of_the_sample(path):
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-of", path], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=allocator_environment())
    assert done.returncode == 0, done.stderr
    # The sample is 24 MP: a flip takes a tenth of a second or more of CPU on any machine.
    assert 0.02 < float(done.stdout) < 30


def test_the_cpu_comparison_prints_both_paths_alone_and_through_the_service():
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-rounds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=allocator_environment())
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s+(lossless|re-encoded)\s+alone\s+([\d.]+) ms\s+POST /flip to the service\s+([\d.]+) ms\s+"
                      r"x([\d.]+)$", done.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["lossless", "re-encoded"], done.stdout
    for _, alone, served, ratio in rows:
        assert float(alone) > 0 and float(served) > 0
        assert float(ratio) == pytest.approx(float(served) / float(alone), abs=0.002)
