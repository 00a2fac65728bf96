"""Locust load for flipfleet: users that flip a picture, and a light user that asks who answers.

Run from the repo root (locust puts the working directory on sys.path, so `service` imports):

    locust --config loadtest/locust.conf                    # both users, headless defaults
    locust --config loadtest/locust.conf FlipUser           # one class, by name

FLIP_PHOTO=path posts that picture instead of the bundled sample; FLIP_QUERY adds a query
string (lossless=false); FLIP_VERIFY=full also decodes every answer in full; FLIP_API_KEY sends
that key with every flip (a stack with FLIP_API_KEYS_FILE).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import gevent
from geventhttpclient.client import HTTPClientPool
from locust import FastHttpUser, constant, constant_throughput, events, task
from locust.runners import MasterRunner
from locust.stats import CSV_STATS_INTERVAL_SEC
from PIL import Image, ImageChops, ImageOps, ImageStat, UnidentifiedImageError

from service.imaging import MEDIA_TYPES, ORIENTATION  # the import registers Pillow's HEIC reader too
from service.sample import make_sample

# Every answer is checked: its format and size from its header, its pixels against the flip of what
# was sent, on pictures shrunk 8 times. The service answers one upload with the same bytes every
# time, so an answer equal to one already found right is right, found by comparing bytes rather
# than by decoding (which would cost the load generator more CPU than nginx spends on the flip).
# FLIP_VERIFY=full also decodes every answer in full, each time (a truncated scan shows only so).
FULL_VERIFY = os.environ.get("FLIP_VERIFY", "") == "full"
# Answers found right, kept to compare the next ones with: one per replica image and flip path.
VERIFIED_KEPT = 4
# Mean difference per sample, out of 255, that a re-encoded flip (and the shrinking) stays within.
PIXEL_TOLERANCE = 4
# FLIP_QUERY=lossless=false (or direction=horizontal): the query string every flip is sent with.
FLIP_QUERY = os.environ.get("FLIP_QUERY", "")
# FLIP_API_KEY: a key of the stack's keys file, sent with every flip.
KEY_HEADERS = {"Authorization": f"Bearer {os.environ['FLIP_API_KEY']}"} if os.environ.get("FLIP_API_KEY") else {}
# EXIF orientations 5-8 turn the picture a quarter turn, so a viewer sees width and height swapped.
QUARTER_TURNS = {5, 6, 7, 8}


@dataclass(frozen=True)
class Upload:
    data: bytes
    format: str
    media_type: str
    expected_size: tuple[int, int]
    expected_pixels: Image.Image  # the flip of what a viewer sees of it, shrunk (shrunk())


def shrunk(data: bytes) -> Image.Image:
    """The picture as a viewer sees it (its EXIF orientation applied), an eighth of its size, RGB."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max(im.width // 8, 1), max(im.height // 8, 1)))  # a JPEG decodes smaller
        shown = ImageOps.exif_transpose(im.convert("RGB"))
    return shown.resize((max(shown.width // 8, 1), max(shown.height // 8, 1))) if max(shown.size) > 1000 else shown


def _format_of(im: Image.Image) -> str:
    # The service answers a phone's MPO with its main JPEG.
    return "JPEG" if im.format == "MPO" else im.format


@functools.cache
def upload() -> Upload:
    """The picture every FlipUser posts: read or made once per process, not per request."""
    photo = os.environ.get("FLIP_PHOTO")
    data = Path(photo).read_bytes() if photo else make_sample()
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"FLIP_PHOTO={photo} is not a picture Pillow can read") from None
    with im:
        fmt = _format_of(im)
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"FLIP_PHOTO={photo} is {fmt}; send one of {', '.join(MEDIA_TYPES)}")
        width, height = im.size
        turned = im.getexif().get(ORIENTATION, 1) in QUARTER_TURNS
    direction = parse_qs(FLIP_QUERY).get("direction", ["vertical"])[0]
    flip = Image.Transpose.FLIP_LEFT_RIGHT if direction == "horizontal" else Image.Transpose.FLIP_TOP_BOTTOM
    return Upload(data, fmt, MEDIA_TYPES[fmt], (height, width) if turned else (width, height),
                  shrunk(data).transpose(flip))


def pixels_differ(body: bytes, expected: Upload) -> str | None:
    """Why the answer's pixels are not the flip of the upload's, or None."""
    got = shrunk(body)
    if got.size != expected.expected_pixels.size:
        got = got.resize(expected.expected_pixels.size)
    difference = sum(ImageStat.Stat(ImageChops.difference(got, expected.expected_pixels)).mean) / 3
    return None if difference <= PIXEL_TOLERANCE else (
        f"the pixels are not the flip of the picture sent (mean difference {difference:.1f} of 255)")


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks up to this size come from the memory malloc keeps, and it keeps this much free.
KEPT_BLOCK_BYTES = 64 * 1024 * 1024


def keep_answer_memory() -> None:
    """Have glibc's malloc serve each answer's buffer from memory it keeps rather than from a fresh
    mapping, whose every page is faulted in and zeroed: for the sample's 6.5 MB answers, about a
    tenth of the load generator's CPU. Another C library is left as it is."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)
        mallopt(M_TRIM_THRESHOLD, KEPT_BLOCK_BYTES)


@events.init.add_listener
def prepare_upload(environment, **_kwargs) -> None:
    # Make the picture before the first user starts (a bad FLIP_PHOTO stops locust at start-up);
    # the master sends no requests, so it skips the work.
    if not isinstance(environment.runner, MasterRunner):
        keep_answer_memory()
        upload()


@events.quit.add_listener
def let_the_csv_catch_up(**_kwargs) -> None:
    # locust rewrites its --csv files once a second and closes them right after this event: without
    # one more turn of its writer, the run's last second is missing from them.
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)


def answered_200(response) -> bool:
    """Whether the request got a 200; marks it failed otherwise, except for a connection error,
    which locust reports itself, grouped by its root cause rather than by each socket's address."""
    if response.status_code in (0, 200):
        return response.status_code == 200
    retry_after = response.headers.get("Retry-After")
    retry = f" (Retry-After: {retry_after})" if retry_after else ""
    response.failure(f"status {response.status_code}, not 200{retry}: {response.text[:200]}")
    return False


def problem_with_picture(body: bytes, expected: Upload) -> str | None:
    """Why `body` is not the flipped upload, or None when it is."""
    if not FULL_VERIFY and any(body == right for right in _verified):
        return None
    try:
        with Image.open(io.BytesIO(body)) as im:
            if _format_of(im) != expected.format:
                return f"the body is {im.format}, not {expected.format}"
            width, height = expected.expected_size
            if im.size != (width, height):
                return f"the picture is {im.width}x{im.height}, not {width}x{height}"
            if FULL_VERIFY:
                im.load()
        problem = pixels_differ(body, expected)
    except Exception as exc:  # Pillow signals damaged data through many exception types
        return f"the body is not a whole picture: {exc}"
    if problem is None and not FULL_VERIFY:
        _verified.append(body)
    return problem


_verified: collections.deque[bytes] = collections.deque(maxlen=VERIFIED_KEPT)


# geventhttpclient reads answers in 4 KiB blocks by default, 1,600 reads per flipped photo;
# 256 KiB blocks cut geventhttpclient's CPU per flip from ~16 to ~10 ms (against a loopback
# dummy server; locust's whole process went from ~22 to ~15 ms).
# One pool for all FlipUsers of a process: room for a connection each, up to 256 users.
FLIP_CLIENTS = HTTPClientPool(concurrency=256, block_size=256 * 1024, connection_timeout=60, network_timeout=120)


# FastHttpUser (geventhttpclient) rather than HttpUser (requests): it moves the 6.5 MB upload
# and answer for a fraction of the CPU, which on a small machine is taken from the service.
class FlipUser(FastHttpUser):
    client_pool = FLIP_CLIENTS
    # Three flipping users to one probe: the flips are the load, the probe only samples latency.
    weight = 3
    # Closed loop: each user posts again as soon as it has its answer, like the article's clients.
    wait_time = constant(0)

    @task
    def flip(self) -> None:
        picture = upload()
        with self.client.post(
            f"/flip?{FLIP_QUERY}" if FLIP_QUERY else "/flip",
            data=picture.data,
            headers={"Content-Type": picture.media_type, **KEY_HEADERS},
            name="/flip",
            catch_response=True,
        ) as response:
            if not answered_200(response):
                return
            content_type = response.headers.get("Content-Type")
            if content_type != picture.media_type:
                response.failure(f"Content-Type is {content_type}, not {picture.media_type}")
                return
            announced = int(response.headers.get("Content-Length") or -1)
            if 0 <= announced != len(response.content):  # the connection closed before the whole answer
                response.failure(f"Incomplete response: {len(response.content)} of {announced} bytes")
                return
            problem = problem_with_picture(response.content, picture)
            if problem:
                response.failure(problem)


class WhoAmIUser(FastHttpUser):
    weight = 1
    # A probe, not load: at most 2 requests a second, which show how long flips make others wait.
    wait_time = constant_throughput(2)

    @task
    def whoami(self) -> None:
        with self.client.get("/", name="/", catch_response=True) as response:
            if answered_200(response) and not response.text.startswith("flipfleet replica"):
                response.failure(f"not a replica's answer: {response.text[:200]!r}")
