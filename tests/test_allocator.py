"""service.allocator: memory kept while flips come, handed back once they stop."""

import subprocess
import sys
import threading
import time

import pytest

from harness import ROOT, wait_for
from loadtest.memory import GLIBC_TUNED, allocator_environment
from service.allocator import MallocRelease


class Flips:
    """A stand-in for FlipGate's counters, driven by the test."""

    def __init__(self):
        self.admitted, self.held = 0, 0
        self.lock = threading.Lock()

    def __call__(self) -> tuple[int, int]:
        with self.lock:
            return self.admitted, self.held


@pytest.fixture
def watched():
    """A MallocRelease on fast clocks, its releases counted; stopped after the test."""
    flips, released = Flips(), []
    release = MallocRelease(flips, idle_seconds=0.3, release=lambda: released.append(time.monotonic()),
                            look_seconds=0.05).start()
    yield flips, released
    release.stop()


def test_a_new_process_has_nothing_to_hand_back(watched):
    _, released = watched
    time.sleep(0.6)
    assert released == []


def test_memory_is_handed_back_once_after_the_flips_stop_and_not_while_one_is_held(watched):
    flips, released = watched
    with flips.lock:
        flips.admitted, flips.held = 1, 1
    time.sleep(0.6)  # past the idle time, but a flip is held
    assert released == []
    done = time.monotonic()
    with flips.lock:
        flips.held = 0
    assert wait_for(lambda: released, timeout=2)
    assert released[0] - done >= 0.3
    time.sleep(0.6)
    assert len(released) == 1  # idle on: no second release


def test_a_flip_begun_and_done_between_two_looks_counts(watched):
    flips, released = watched
    with flips.lock:
        flips.admitted = 1  # held 0 at every look: only the count says a flip came
    assert wait_for(lambda: released, timeout=2)
    with flips.lock:
        flips.admitted = 2
    assert wait_for(lambda: len(released) == 2, timeout=2)


HAND_BACK = """
import sys
from PIL import Image
from service import imaging
from service.allocator import allocator, hand_back
from service.config import Settings
from service.sample import load_sample

def resident():
    status = open("/proc/self/status").read()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024

imaging.keep_image_memory(Settings.from_env({}).pillow_blocks)
data = load_sample(None)
for lossless in (True, False, True):
    imaging.flip(data, lossless=lossless)
kept = resident()
hand_back()
print(allocator(), kept, resident())
"""


@pytest.mark.parametrize(("environ", "kind"), [({}, "jemalloc"), (GLIBC_TUNED, "glibc")], ids=["image", "glibc"])
def test_a_process_hands_back_what_its_flips_kept(request, environ, kind):
    if kind == "jemalloc":
        request.getfixturevalue("jemalloc")
    # The image's jemalloc, then glibc as a local run has it: each frees Pillow's blocks and its free pages.
    done = subprocess.run([sys.executable, "-c", HAND_BACK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=allocator_environment(environ) if environ else allocator_environment())
    assert done.returncode == 0, done.stderr
    found, kept, after = done.stdout.split()
    print(f"{found}: {int(kept) / 2**20:.0f} MiB after three flips of the sample, {int(after) / 2**20:.0f} MiB "
          "handed back")
    assert found == kind
    assert int(kept) - int(after) > 100 * 2**20  # Pillow's blocks of a 24 MP picture alone are 192 MiB
