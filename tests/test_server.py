"""The real thing: `python -m service` (waitress) started on a free loopback port."""

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
from PIL import Image

from harness import wait_for
from harness.service import start_service
from service import imaging
from service.app import create_app
from service.config import Settings
from service.sample import load_sample
from service.server import SEND_BUFFER_BYTES, BodyChunks, GracefulServer, RequestParser, build_server
from tests.pictures import decode, encode, noise_png, picture

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


def flips_in_flight(url: str, count: int) -> tuple[list, list[threading.Thread]]:
    """`count` flips of the 24 MP sample posted at once; their answers (or errors) land in the list.
    Re-encoded (?lossless=false), the slower path: the drain tests count on each taking ~0.3 s."""
    photo = load_sample(None)
    answers: list = []

    def post() -> None:
        try:
            response = requests.post(url + "/flip?lossless=false", data=photo, headers={"Content-Type": "image/jpeg"},
                                     timeout=60)
            answers.append((response.status_code, len(response.content)))
        except requests.RequestException as exc:
            answers.append(exc)

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    return answers, threads


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_finishes_every_request_in_flight_and_refuses_new_ones(sig):
    service = start_service(FLIP_DRAIN_SECONDS="30")
    answers, threads = flips_in_flight(service.url, 4)  # ~1 s of flipping, one at a time
    assert wait_for(lambda: "POST /flip 200" in "".join(service.output), timeout=30)  # the first is done
    service.process.send_signal(sig)
    assert wait_for(lambda: "draining" in "".join(service.output), timeout=10)
    with pytest.raises(requests.ConnectionError):
        requests.get(service.url + "/healthz", timeout=5)  # no longer accepting
    for thread in threads:
        thread.join(timeout=60)
    assert service.wait(timeout=30) == 0
    flipped_size = len(imaging.flip(load_sample(None), lossless=False).data)
    assert len(answers) == 4 and all(answer == (200, flipped_size) for answer in answers), answers
    assert "0 connection(s) cut" in service.output[-1]


def hello(environ, start_response):
    """The smallest WSGI app: the drain, not the app, is under test."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def test_a_stop_answers_the_connections_that_arrived_since_the_last_look():
    # Between two turns of the serving loop connections arrive: some accepted and not yet read,
    # some still in the kernel's queue. nginx has sent each a flip it will not send again, so
    # the drain must answer them, not close or reset them.
    server = GracefulServer(build_server(Settings.from_env({}, port=0), hello), drain_seconds=10)
    port = server.server.socket.getsockname()[1]
    accepted = socket.create_connection(("127.0.0.1", port), timeout=10)
    server.server.handle_accept()  # a channel now, with nothing read from it
    assert len(server.server.active_channels) == 1
    queued = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    for sock in [accepted, *queued]:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server.stop()
    assert server.serve_until_stopped(signals=()) == 0
    for sock in [accepted, *queued]:
        answer = b""
        while chunk := sock.recv(65536):  # the drain closes each connection once it is answered
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"hello"), answer
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)  # and no longer accepting


def test_a_stop_closes_a_connection_that_never_speaks():
    # A connection that sends nothing is given a moment to (nginx writes as soon as it connects), not the drain.
    server = GracefulServer(build_server(Settings.from_env({}, port=0), hello), drain_seconds=30)
    port = server.server.socket.getsockname()[1]
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    server.stop()
    started = time.monotonic()
    assert server.serve_until_stopped(signals=()) == 0
    took = time.monotonic() - started
    assert silent.recv(1) == b""  # closed, not answered
    silent.close()
    assert took < 10, took


def test_the_drain_ends_at_its_deadline():
    service = start_service(FLIP_DRAIN_SECONDS="1")
    answers, threads = flips_in_flight(service.url, 12)  # several seconds of work, one at a time
    assert wait_for(lambda: "POST /flip 200" in "".join(service.output), timeout=30)
    stopped_at = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    assert service.wait(timeout=30) == 0
    took = time.monotonic() - stopped_at
    for thread in threads:
        thread.join(timeout=60)
    assert took < 5, took  # the deadline (1 s), plus the flip that was running
    # Its last word (a flip cut at the deadline may still log after it, as the process exits).
    (stopped,) = [line for line in service.output if " stopped (" in line]
    cut = int(re.search(r"\((\d+) connection\(s\) cut by the drain deadline\)", stopped).group(1))
    flipped_size = len(imaging.flip(load_sample(None), lossless=False).data)
    outcomes = collections.Counter(
        "cut" if isinstance(answer, requests.RequestException) else
        "flipped" if answer == (200, flipped_size) else "refused" if answer[0] in (429, 503) else answer
        for answer in answers)
    print(f"drain deadline 1 s: the process ended {took:.2f} s after SIGTERM; {dict(outcomes)}")
    # Each answer whole, or refused at once (the queue, or the client's share of it, was full), or
    # cut: at most the connections the replica's log says were still busy at the deadline (one may
    # finish as the process exits).
    assert len(answers) == 12 and set(outcomes) <= {"flipped", "refused", "cut"}, outcomes
    assert outcomes["flipped"] >= 1 and 1 <= outcomes["cut"] <= cut


def test_bad_configuration_is_reported_not_ignored():
    environ = {**os.environ, "FLIP_QUEUE": "many"}
    result = subprocess.run([sys.executable, "-m", "service"], env=environ, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "FLIP_QUEUE must be a whole number" in result.stdout


def test_a_waiting_flip_whose_client_left_gives_its_place_up():
    service = start_service(FLIP_QUEUE="3")
    try:
        slow = noise_png((2800, 2800))  # about a second of zlib work each, one at a time
        small = encode(picture("RGB"), "PNG")

        address = urllib.parse.urlsplit(service.url)

        def raw_post(body: bytes, request_id: str) -> socket.socket:
            sock = socket.create_connection((address.hostname, address.port), timeout=30)
            sock.sendall(f"POST /flip HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Request-ID: {request_id}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return sock

        ahead = [raw_post(slow, "ahead-1"), raw_post(slow, "ahead-2")]
        time.sleep(0.3)
        waiting = raw_post(small, "gone-1")  # the third of FLIP_QUEUE=3: it waits behind the slow ones
        time.sleep(0.3)
        waiting.close()  # its client leaves, as nginx does when its own client gives up
        time.sleep(0.5)
        # Its place is free again: a new flip is held, not refused, and answered once the slow one is done.
        response = requests.post(service.url + "/flip", data=small, headers={"Content-Type": "image/png"},
                                 timeout=60)
        assert response.status_code == 200, response.text
        for sock in ahead:
            sock.close()
    finally:
        service.stop()
    # The flip of the client that left was never done: it gave up its place while it waited.
    log = "".join(service.output)
    assert "rid=gone-1 POST /flip 499" in log and "rid=gone-1 POST /flip 200" not in log, log[-2000:]


def test_a_connection_sends_an_answer_from_a_buffer_of_most_of_a_photo():
    settings = Settings.from_env({"PORT": "0", "HOST": "127.0.0.1"})
    server = build_server(settings, create_app(settings))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    try:
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=10) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200")
            (channel,) = server.active_channels.values()
            # The kernel gives twice what is asked, for its own bookkeeping, up to net.core.wmem_max.
            cap = int(Path("/proc/sys/net/core/wmem_max").read_text())
            assert channel.sendbuf_len >= 2 * min(SEND_BUFFER_BYTES, cap)
    finally:
        server.close()
        serving.join(timeout=10)


def test_a_body_of_known_length_is_joined_once_and_read_whole_without_another_copy():
    body, parts = BodyChunks(), [bytes([n]) * 1000 for n in range(5)]
    for part in parts:
        body.append(part)
    assert len(body) == 5000
    file = body.getfile()
    whole = file.read(5000)
    assert whole == b"".join(parts) and body.getfile() is file
    file.seek(0)
    assert file.read(5000) is whole  # the app's one read hands back the joined bytes themselves
    body.close()
    assert file.closed


def test_the_server_receives_bodies_of_known_length_into_chunks():
    settings = Settings.from_env({"PORT": "0"})
    server = build_server(settings, create_app(settings))
    try:
        assert server.channel_class.parser_class is RequestParser
    finally:
        server.close()
