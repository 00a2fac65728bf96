"""The real thing: `python -m service` (waitress) started on a free loopback port."""

import os
import re
import signal
import subprocess
import sys

import pytest
import requests
from PIL import Image

from loadtest.local import start_service
from tests.pictures import decode, encode, picture

MAX_BYTES = 2 * 1024 * 1024
DOWN = Image.Transpose.FLIP_TOP_BOTTOM


@pytest.fixture(scope="module")
def live():
    """A running service with a 2 MB body limit; yields its base URL and process."""
    service = start_service(FLIP_MAX_BYTES=str(MAX_BYTES), FLIP_REPLICA_NAME="live")
    yield service.url, service.process
    service.stop()


def test_whoami_and_health(live):
    url, process = live
    assert requests.get(url + "/", timeout=10).text == f"flipfleet replica live (pid {process.pid})\n"
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"


def test_flip_over_http(live):
    url, _ = live
    response = requests.post(url + "/flip", data=encode(picture("RGBA"), "PNG"),
                             headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["X-Served-By"] == "live"
    assert re.fullmatch(r"\d+\.\dms", response.headers["X-Response-Time"])
    assert decode(response.content).tobytes() == picture("RGBA").transpose(DOWN).tobytes()


def test_multipart_over_http(live):
    url, _ = live
    files = {"image": ("photo.gif", encode(picture("P"), "GIF"), "image/gif")}
    response = requests.post(url + "/flip", files=files, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/gif"


def test_chunked_upload(live):
    url, _ = live
    data = encode(picture("RGB"), "BMP")
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
    response = requests.post(url + "/flip", data=chunks, headers={"Content-Type": "image/bmp"}, timeout=30)
    assert response.status_code == 200
    assert decode(response.content).tobytes() == picture("RGB").transpose(DOWN).tobytes()


def test_no_body_flips_the_sample(live):
    url, _ = live
    response = requests.post(url + "/flip", timeout=60)
    assert response.status_code == 200
    assert decode(response.content).size == (6000, 4000)


@pytest.mark.parametrize(
    ("size", "status", "kind"),
    [
        (MAX_BYTES + 1, 413, "application/json"),  # the app's JSON error
        (2 * MAX_BYTES + 1, 413, "text/plain"),  # waitress refuses it before reading the body
    ],
)
def test_body_limit(live, size, status, kind):
    url, _ = live
    response = requests.post(url + "/flip", data=b"\0" * size, headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith(kind)


def test_bad_input_leaves_the_process_serving(live):
    url, process = live
    bodies = [b"", b"junk", encode(picture("RGB"), "PNG")[:100], b"GIF89a" + b"\xff" * 50]
    for body in bodies:
        response = requests.post(url + "/flip", data=body, headers={"Content-Type": "image/png"}, timeout=30)
        assert 400 <= response.status_code < 500, response.text
        assert "error" in response.json()
    assert process.poll() is None
    assert requests.get(url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly_on_signal(sig):
    service = start_service()
    assert requests.get(service.url + "/healthz", timeout=10).status_code == 200
    assert service.stop(sig) == 0
    assert "stopped" in service.output[-1]


def test_bad_configuration_is_reported_not_ignored():
    environ = {**os.environ, "FLIP_THREADS": "many"}
    result = subprocess.run([sys.executable, "-m", "service"], env=environ, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "FLIP_THREADS must be a whole number" in result.stdout
