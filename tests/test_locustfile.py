"""loadtest/locustfile.py run by locust itself, headless: against the real service, whose
answers must all pass its checks, and against a server whose answers must all fail them."""

import csv
import io
import itertools
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from loadtest.local import running_service
from service.imaging import ORIENTATION

REPO = Path(__file__).resolve().parent.parent
# Far above any run here (run-time plus start-up), so that only a hung locust reaches it.
LOCUST_TIMEOUT = 90
PHOTO_SIZE = (64, 48)
ROTATE_270 = 6  # EXIF orientation: a viewer turns the picture a quarter turn, 64x48 -> 48x64


def encoded(im: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def run_locust(host: str, csv_prefix: Path, *classes: str, users: int, run_time: str, **env: str):
    """Run locust with loadtest/locust.conf from the repo root, as its README says."""
    # The caller's own FLIP_PHOTO or FLIP_VERIFY must not leak into the run.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLIP_")}
    command = [
        sys.executable, "-m", "locust", "--config", "loadtest/locust.conf", "--host", host,
        "--users", str(users), "--spawn-rate", str(users), "--run-time", run_time,
        "--csv", str(csv_prefix), *classes,
    ]
    return subprocess.run(command, cwd=REPO, env={**environ, **env}, capture_output=True, text=True,
                          timeout=LOCUST_TIMEOUT)


def stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f) if row["Name"] != "Aggregated"}


def errors(csv_prefix: Path, name: str) -> list[str]:
    with open(f"{csv_prefix}_failures.csv", newline="") as f:
        return [row["Error"] for row in csv.DictReader(f) if row["Name"] == name]


def assert_clean(result, csv_prefix: Path, *names: str) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    rows = stats(csv_prefix)
    for name in names:
        assert int(rows[name]["Request Count"]) > 0, report
        assert int(rows[name]["Failure Count"]) == 0, report


@pytest.fixture(scope="module")
def service():
    """The real service, `python -m service` on a free loopback port."""
    with running_service() as running:
        yield running


@pytest.fixture
def turned_photo(tmp_path) -> Path:
    """A 64x48 JPEG whose EXIF orientation turns it to 48x64 for a viewer."""
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_270
    path = tmp_path / "turned.jpg"
    path.write_bytes(encoded(Image.new("RGB", PHOTO_SIZE, "teal"), "JPEG", exif=exif))
    return path


@pytest.fixture
def liar():
    """A loopback server answering POST /flip and GET / with 200s, or a 503, that are all wrong
    for `turned_photo`; yields its base URL."""
    upright = Image.new("RGB", PHOTO_SIZE[::-1], "teal")
    jpeg = encoded(upright, "JPEG")
    png = encoded(upright, "PNG")
    wrong_answers = itertools.cycle([
        (200, "image/png", png),  # wrong Content-Type
        (200, "image/jpeg", png),  # Content-Type and body disagree
        (200, "image/jpeg", encoded(Image.new("RGB", PHOTO_SIZE), "JPEG")),  # orientation ignored
        (200, "image/jpeg", jpeg[: len(jpeg) // 2]),  # truncated: only a full decode sees it
        (503, "application/json", b'{"error": "busy", "status": 503}'),
    ])
    lock = threading.Lock()

    class Liar(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status, content_type, body = next(wrong_answers)
            self.answer(status, content_type, body)

        def do_GET(self):
            self.answer(200, "text/html", b"<h1>Welcome to nginx!</h1>")

        def answer(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
    result = run_locust(service.url, tmp_path / "run", users=2, run_time="6s")
    assert_clean(result, tmp_path / "run", "/flip", "/")


def test_flip_user_alone_expects_the_exif_turned_size(service, tmp_path, turned_photo):
    result = run_locust(service.url, tmp_path / "run", "FlipUser", users=1, run_time="3s",
                        FLIP_PHOTO=str(turned_photo), FLIP_VERIFY="full")
    assert_clean(result, tmp_path / "run", "/flip")
    assert "/" not in stats(tmp_path / "run")


def test_wrong_answers_are_failures(liar, tmp_path, turned_photo):
    result = run_locust(liar, tmp_path / "run", users=2, run_time="3s",
                        FLIP_PHOTO=str(turned_photo), FLIP_VERIFY="full")
    report = result.stdout + result.stderr
    assert result.returncode == 1, report  # locust's exit code when any request failed
    rows = stats(tmp_path / "run")
    for name in ("/flip", "/"):
        assert int(rows[name]["Request Count"]) > 0, report
        assert rows[name]["Failure Count"] == rows[name]["Request Count"], report
    flip_errors = "\n".join(errors(tmp_path / "run", "/flip"))
    for expected in (
        "Content-Type is image/png, not image/jpeg",
        "the body is PNG, not JPEG",
        "the picture is 64x48, not 48x64",
        "the body is not a whole picture",
        "status 503, not 200",
    ):
        assert expected in flip_errors, flip_errors
    assert "not a replica's answer" in "\n".join(errors(tmp_path / "run", "/"))
