"""loadtest/locustfile.py run by locust itself, headless: against the real service, whose
answers must all pass its checks, and against a server whose answers must all fail them."""

import io
import itertools
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from harness.locust import LocustRun, run_locust, under_load
from harness.service import running_service
from service.imaging import ORIENTATION  # also registers the HEIC reader and writer

PHOTO_SIZE = (64, 48)
ROTATE_270 = 6  # EXIF orientation: a viewer turns the picture a quarter turn, 64x48 -> 48x64


def encoded(im: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def assert_clean(run: LocustRun, *names: str) -> None:
    assert run.exit_code == 0, run.output
    for name in names:
        figures = run.figures(name)
        assert figures["requests"] > 0 and figures["failures"] == 0, run.output
        # The CSV the harness reads holds the whole run: as many requests as locust's final table.
        printed = re.search(rf"^(?:GET|POST)\s+{re.escape(name)}\s+(\d+)\s", run.output, re.MULTILINE)
        assert printed and int(printed.group(1)) == figures["requests"], run.output[-3000:]


@pytest.fixture(scope="module")
def service():
    """The real service, `python -m service` on a free loopback port."""
    with running_service() as running:
        yield running


def two_colours(size: tuple[int, int]) -> Image.Image:
    """Teal with an orange left half: a flip, or a turn, shows."""
    im = Image.new("RGB", size, "teal")
    im.paste("orange", (0, 0, size[0] // 2, size[1]))
    return im


@pytest.fixture
def turned_photo(tmp_path) -> Path:
    """A 64x48 JPEG whose EXIF orientation turns it to 48x64 for a viewer."""
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_270
    path = tmp_path / "turned.jpg"
    path.write_bytes(encoded(two_colours(PHOTO_SIZE), "JPEG", exif=exif, quality=95))
    return path


@pytest.fixture
def liar():
    """A loopback server answering POST /flip and GET / with 200s, or a 503, that are all wrong
    for `turned_photo`; yields its base URL."""
    upright = two_colours(PHOTO_SIZE).transpose(Image.Transpose.ROTATE_270)  # what a viewer sees
    jpeg = encoded(upright, "JPEG")
    png = encoded(upright, "PNG")
    wrong_answers = itertools.cycle([
        (200, "image/png", png),  # wrong Content-Type
        (200, "image/jpeg", png),  # Content-Type and body disagree
        (200, "image/jpeg", encoded(Image.new("RGB", PHOTO_SIZE), "JPEG")),  # orientation ignored
        (200, "image/jpeg", jpeg[: len(jpeg) // 2]),  # truncated: only a full decode sees it
        (200, "image/jpeg", jpeg, len(jpeg) + 1000),  # the connection closes before the whole answer
        (200, "image/jpeg", jpeg),  # the right size and format, but not flipped
        (503, "application/json", b'{"error": "busy", "status": 503}'),
    ])
    lock = threading.Lock()

    class Liar(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status, content_type, body, *announced = next(wrong_answers)
            self.answer(status, content_type, body, *announced)

        def do_GET(self):
            self.answer(200, "text/html", b"<h1>Welcome to nginx!</h1>")

        def answer(self, status, content_type, body, announced=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(announced or len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = announced is not None

        def log_message(self, *args):
            pass  # thousands of requests; the test reads locust's CSV instead

    server = ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_both_users_pass_against_the_service_with_the_sample(service, tmp_path):
    # 2 users at the 3:1 weights: one FlipUser and one WhoAmIUser.
    run = run_locust(service.url, users=2, seconds=6, csv_prefix=tmp_path / "run")
    assert_clean(run, "/flip", "/")


def test_flip_user_alone_expects_the_exif_turned_size(service, tmp_path, turned_photo):
    for query in ("", "lossless=false", "direction=horizontal"):  # every answer's pixels checked
        run = run_locust(service.url, "FlipUser", users=1, seconds=3, csv_prefix=tmp_path / "run",
                         FLIP_PHOTO=str(turned_photo), FLIP_VERIFY="full", FLIP_QUERY=query)
        assert_clean(run, "/flip")
        assert "/" not in run.stats


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_flip_user_sends_what_phones_send(service, tmp_path, fmt):
    # Written turned, as a phone does: the container's rotation, which both readers apply or report.
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_270
    photo = tmp_path / f"turned.{'heic' if fmt == 'HEIF' else 'avif'}"
    photo.write_bytes(encoded(Image.new("RGB", PHOTO_SIZE, "teal"), fmt, exif=exif, quality=90))
    run = run_locust(service.url, "FlipUser", users=1, seconds=3, csv_prefix=tmp_path / "run",
                     FLIP_PHOTO=str(photo), FLIP_VERIFY="full")
    assert_clean(run, "/flip")


@pytest.mark.parametrize("verify", ["", "full"])
def test_wrong_answers_are_failures(liar, tmp_path, turned_photo, verify):
    # Every answer is checked, not one in some: each wrong one fails, every time it comes.
    run = run_locust(liar, users=2, seconds=3, csv_prefix=tmp_path / "run",
                     FLIP_PHOTO=str(turned_photo), FLIP_VERIFY=verify)
    assert run.exit_code == 1, run.output  # locust's exit code when any request failed
    for name in ("/flip", "/"):
        figures = run.figures(name)
        assert figures["requests"] > 0 and figures["failures"] == figures["requests"], run.output
    flip_errors = "\n".join(run.errors("/flip"))
    for expected in (
        "Content-Type is image/png, not image/jpeg",
        "the body is PNG, not JPEG",
        "the picture is 64x48, not 48x64",
        "the body is not a whole picture",
        "Incomplete response",
        "the pixels are not the flip of the picture sent",
        "status 503, not 200",
    ):
        assert expected in flip_errors, flip_errors
    assert "not a replica's answer" in "\n".join(run.errors("/"))


def test_a_load_told_to_stop_ends_then_with_its_whole_report(service, tmp_path):
    # under_load(then=...) ends locust the way its run time does, with the same report.
    with under_load(service.url, tmp_path, seconds=120, users=2, then=2) as finished:
        started = time.monotonic()
        time.sleep(2)
    took = time.monotonic() - started
    run = finished[0]
    assert took < 60, took  # stopped, not run to its 120 s
    assert_clean(run, "/flip")
