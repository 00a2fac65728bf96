"""A replica's memory: the worst case worked out from the settings (service/memory.py) against the
limits the deployments set, then a real replica driven to that worst case under its limit."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import random
import re
import threading
import time

import pytest
import yaml
from PIL import Image

from harness import ROOT, alongside, client, usage, wait_for
from harness.compose import run, size
from harness.locust import run_locust
from loadtest.memory import ALLOCATOR_PREFIXES, GLIBC_TUNED, IMAGE_ENV
from service import imaging, memory
from service.config import Settings
from service.sample import load_sample


def compose_web_limit() -> int:
    limit = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["web"]["deploy"]["resources"]["limits"]
    return size(re.fullmatch(r"\$\{WEB_MEMORY_LIMIT:-(\w+)\}", limit["memory"]).group(1))


@pytest.mark.docker
def test_local_runs_set_the_allocator_as_the_image_does(docker_images):
    # What loadtest.memory and loadtest.overhead give a local `python -m service`, against the
    # environment of the image that was built, and jemalloc really loaded in a replica.
    inspect = run(["docker", "image", "inspect", "flipfleet-web:latest", "--format", "{{json .Config.Env}}"])
    env = dict(entry.split("=", 1) for entry in json.loads(inspect.stdout))
    allocator = {key: value for key, value in env.items() if key.startswith(ALLOCATOR_PREFIXES)}
    assert allocator and IMAGE_ENV == allocator
    maps = run(["docker", "run", "--rm", "flipfleet-web:latest", "python", "-c",
                "print(''.join(line for line in open('/proc/self/maps') if 'jemalloc' in line))"])
    assert "libjemalloc.so.2" in maps.stdout, maps.stderr


def test_the_worst_case_counts_the_images_allocator():
    terms = memory.worst_case(Settings.from_env({}), IMAGE_ENV)
    (rounding,) = [size for what, size in terms.items() if what.startswith("jemalloc")]
    assert rounding == (sum(terms.values()) - rounding - memory.RUNTIME_BYTES) // 4
    assert not any(what.startswith("glibc") for what in terms)


def test_the_worst_case_fits_the_limit_every_deployment_sets():
    needed = memory.needed(Settings.from_env({}), IMAGE_ENV)
    # What kustomize's replacements put into the web Deployment (tests/test_k8s.py renders it).
    k8s = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "stack-values.yaml").read_text())
    k8s_limit = size(k8s["spec"]["webMemoryLimit"])
    print(f"worst case {needed / 2**20:.0f} MiB; compose's limit {compose_web_limit() / 2**20:.0f} MiB, "
          f"Kubernetes' {k8s_limit / 2**20:.0f} MiB")
    assert needed <= compose_web_limit() and needed <= k8s_limit


@pytest.mark.parametrize("setting", ["queue", "max_bytes", "max_pixels", "max_total_pixels", "concurrency"])
def test_every_bound_counts(setting):
    settings = Settings.from_env({})
    bigger = settings.__class__(**{**settings.__dict__, setting: getattr(settings, setting) * 2})
    assert memory.needed(bigger) > memory.needed(settings)


@pytest.mark.parametrize(("environ", "kept"), [
    (GLIBC_TUNED, 32 * 2**20),
    ({"MALLOC_ARENA_MAX": "3"}, 3 * 128 * 2**10),
    ({"MALLOC_TRIM_THRESHOLD_": "1048576"}, 8 * (os.cpu_count() or 1) * 2**20),
    ({}, 8 * (os.cpu_count() or 1) * 128 * 2**10),
])
def test_glibcs_kept_heap_tops_follow_its_settings(environ, kept):
    assert not memory.uses_jemalloc(environ)
    assert memory.kept_heap_tops(environ) == kept
    terms = memory.worst_case(Settings.from_env({}), environ)
    assert terms["glibc's free heap tops, kept for the next request"] == kept


def heavy_png(body_bytes: int, pixels: tuple[int, int]) -> bytes:
    """A PNG of `pixels` RGBA pixels (4 bytes each decoded) whose random band makes it about
    `body_bytes` long: the largest body that decodes to the largest picture."""
    width, height = pixels
    band = max(1, body_bytes // (4 * width))
    im = Image.new("RGBA", pixels)
    im.paste(Image.frombytes("RGBA", (width, band), random.Random(1).randbytes(width * band * 4)), (0, 0))
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=1)
    return out.getvalue()


@pytest.mark.docker
@pytest.mark.slow
def test_a_replica_at_its_worst_case_stays_under_its_memory_limit(stack):
    flipfleet = stack(1)
    settings = Settings.from_env({})
    (replica,) = flipfleet.container_ids()
    limit = int(flipfleet.inspect(replica, "{{.HostConfig.Memory}}"))
    assert limit == compose_web_limit()
    width = 8000  # and as many rows as the pixel limit admits, each counting for two pixels more
    rows = settings.max_pixels // (width + imaging.ROW_BYTES // imaging.LIMITS_BYTES_PER_PIXEL)
    full = heavy_png(int(settings.max_bytes * 0.95), (width, rows))
    assert len(full) <= settings.max_bytes
    highest = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            highest[0] = max(highest[0], usage.memory(replica)["usage"])

    side: list[dict] = []
    # The queue full: the largest bodies that decode to the largest pictures, and another client's
    # flips (at the express lane's limit) taking the last place, beside them.
    beside = threading.Thread(target=lambda: side.extend(
        flipfleet.flip_clients({"connections": 1, "size": "4000x3000"}, seconds=10, start_in=3)))
    watcher = threading.Thread(target=watch)
    watcher.start()
    beside.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(settings.queue) as pool:
            answers = list(pool.map(lambda body: client.post(
                flipfleet.url + "/flip", body, {"Content-Type": "image/png"}, timeout=300),
                [full] * (settings.queue - 1)))
        beside.join(timeout=120)
    finally:
        stop.set()
        watcher.join()
    peak = max(highest[0], usage.memory(replica).get("peak", 0))
    statuses = sorted(answer.status for answer in answers)
    print(f"{settings.queue - 1} flips of a {len(full) / 2**20:.1f} MiB PNG of {settings.max_pixels / 1e6:.0f} MP, and "
          f"{side[0]['flips']} flips beside them from another client: statuses {statuses}; peak "
          f"{peak / 2**20:.0f} MiB of the {limit / 2**20:.0f} MiB limit (worst case worked out: "
          f"{memory.needed(settings, IMAGE_ENV) / 2**20:.0f} MiB)")
    assert statuses == [200] * (settings.queue - 1), [a.body[:200] for a in answers if a.status != 200]
    assert side[0]["flips"] > 0
    assert flipfleet.restart_count(replica) == 0
    assert peak < limit


# Three minutes of load (FLIPFLEET_SOAK_SECONDS for longer), compared in two windows: the
# WINDOW seconds after the first WARM_UP, and the last WINDOW.
WARM_UP, WINDOW = 60, 30
SOAK_SECONDS = max(WARM_UP + 2 * WINDOW, int(os.environ.get("FLIPFLEET_SOAK_SECONDS", "180")))


@pytest.mark.docker
@pytest.mark.slow
def test_memory_stays_flat_under_steady_load(stack, tmp_path):
    flipfleet = stack(2)
    replicas = flipfleet.container_ids()
    photo = tmp_path / "sample.jpg"
    photo.write_bytes(load_sample(None))
    # A replica's memory swings by a photo's worth within each flip, and samples 0.5 s apart can
    # miss a flip's peak for seconds: compare the highest sample of each window.
    samples: dict[str, list[tuple[float, int]]] = {c: [] for c in replicas}

    def sample(stop: threading.Event) -> None:
        started = time.monotonic()
        while not stop.wait(0.5):
            for container in replicas:
                samples[container].append((time.monotonic() - started, usage.memory(container)["anon"]))

    with alongside(sample):
        run = run_locust(flipfleet.url, "FlipUser", users=4, seconds=SOAK_SECONDS, csv_prefix=tmp_path / "soak",
                         FLIP_PHOTO=str(photo))
    flips = run.figures("/flip")
    assert run.exit_code == 0 and flips["failures"] == 0 and flips["requests"] > 0, flips
    assert max(at for at, _ in samples[replicas[0]]) >= SOAK_SECONDS - 5, "memory samples stopped early"

    def highest(container: str, start: float, end: float) -> int:
        return max(anon for at, anon in samples[container] if start <= at < end)

    last = max(at for at, _ in samples[replicas[0]])
    after_a_minute = {c: highest(c, WARM_UP, WARM_UP + WINDOW) for c in replicas}
    at_end = {c: highest(c, last - WINDOW, last + 1) for c in replicas}
    growth = {c[:12]: at_end[c] / after_a_minute[c] - 1 for c in replicas}
    print(f"{SOAK_SECONDS} s of 4 users: replica memory (highest in {WINDOW} s) after {WARM_UP} s -> at the end: "
          + ", ".join(f"{c[:12]} {after_a_minute[c] / 2**20:.0f} -> {at_end[c] / 2**20:.0f} MiB "
                      f"({growth[c[:12]]:+.1%})" for c in replicas))
    assert all(abs(change) <= 0.20 for change in growth.values()), growth


# What a replica may hold once a crowd has gone: the runtime and Pillow's kept blocks.
IDLE_MIB, HAND_BACK_SECONDS = 256, 60


@pytest.mark.docker
@pytest.mark.slow
def test_a_replica_hands_its_memory_back_within_a_minute_of_a_crowd(stack):
    settings = Settings.from_env({})
    crowd = 2 * settings.queue  # every place of both replicas' queues
    flipfleet = stack(2, FLIP_CLIENT_SHARE=str(crowd))
    replicas = flipfleet.container_ids()
    sample = load_sample(None)
    highest = {replica: 0 for replica in replicas}
    with concurrent.futures.ThreadPoolExecutor(crowd) as pool:
        for _ in range(3):
            statuses = list(pool.map(lambda _: client.post(
                flipfleet.url + "/flip", sample, {"Content-Type": "image/jpeg"}, timeout=300).status, range(crowd)))
            assert statuses == [200] * crowd
            highest = {replica: max(highest[replica], usage.memory(replica)["anon"]) for replica in replicas}
    ended = time.monotonic()
    held: dict[str, float] = {}

    def handed_back() -> bool:
        held.update({replica: usage.memory(replica)["anon"] / 2**20 for replica in replicas})
        return all(mib <= IDLE_MIB for mib in held.values())

    back = wait_for(handed_back, timeout=HAND_BACK_SECONDS, interval=1)
    print(f"{crowd} clients x 3 rounds of the sample: replicas' memory after the crowd "
          f"{', '.join(f'{mib / 2**20:.0f}' for mib in highest.values())} MiB, "
          f"{time.monotonic() - ended:.0f} s later {', '.join(f'{mib:.0f}' for mib in held.values())} MiB")
    assert back, f"still held {held} MiB {HAND_BACK_SECONDS} s after the crowd (at most {IDLE_MIB})"
