import dataclasses
import io
import logging
import threading

import pytest
from PIL import Image

from harness import wait_for
from service import imaging
from service.app import AnswerFile, create_app
from service.config import Settings
from service.sample import load_sample
from tests.checks import assert_json_error
from tests.pictures import (
    animation,
    decode,
    encode,
    jpeg_of_precision,
    photo,
    picture,
    png_16_bits,
    png_declaring,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


def test_whoami_names_replica_and_pid(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "test-replica" in response.text
    assert "pid" in response.text


def test_healthz_is_small_json(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    assert response.get_json()["replica"] == "test-replica"
    assert len(response.data) < 200


def test_every_response_has_timing_replica_and_request_id(client):
    for response in (client.get("/"), client.get("/nowhere"), client.post("/flip", data=b"x")):
        assert response.headers["X-Response-Time"].endswith("ms")
        float(response.headers["X-Response-Time"][:-2])
        assert response.headers["X-Served-By"] == "test-replica"
        assert len(response.headers["X-Request-ID"]) == 32


def test_request_id_is_taken_from_the_client_when_safe(client):
    assert client.get("/", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    unsafe = client.get("/", headers={"X-Request-ID": "a b\x7f<script>"}).headers["X-Request-ID"]
    assert unsafe != "a b\x7f<script>" and len(unsafe) == 32


def test_one_access_log_line_per_request(client, caplog, png):
    caplog.set_level(logging.INFO, logger="flipfleet.access")
    client.post("/flip", data=png, content_type="image/png", headers={"X-Request-ID": "rid-7"})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "flipfleet.access"]
    assert "replica=test-replica rid=rid-7 POST /flip 200" in line
    assert f" {len(encode(picture('RGB').transpose(DOWN), 'PNG'))}B " in line
    assert line.endswith("ms")


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", None])
def test_flip_raw_body(client, png, content_type):
    response = client.post("/flip", data=png, content_type=content_type)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert decode(response.data).tobytes() == picture("RGB").transpose(DOWN).tobytes()


@pytest.mark.parametrize("field", ["image", "file"])
def test_flip_multipart(client, png, field):
    response = client.post("/flip", data={field: (io.BytesIO(png), "p.png")})
    assert response.status_code == 200
    assert decode(response.data).tobytes() == picture("RGB").transpose(DOWN).tobytes()


def test_flip_horizontal(client, png):
    response = client.post("/flip?direction=horizontal", data=png, content_type="image/png")
    expected = picture("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert decode(response.data).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"), ("TIFF", "image/tiff"),
     ("BMP", "image/bmp")],
)
def test_answer_is_in_the_format_sent(client, fmt, media_type):
    response = client.post("/flip", data=encode(picture("RGB"), fmt), content_type="image/png")
    assert response.status_code == 200
    assert response.mimetype == media_type
    assert decode(response.data).format == fmt


@pytest.mark.parametrize(
    ("fmt", "content_type", "answer_type"),
    [("HEIF", "image/heic", "image/heic"), ("HEIF", "image/heif", "image/heic"),
     ("HEIF", "image/heic-sequence", "image/heic"), ("AVIF", "image/avif", "image/avif"),
     ("AVIF", "image/avif-sequence", "image/avif")],
)
def test_heic_and_avif_are_flipped(client, fmt, content_type, answer_type):
    response = client.post("/flip", data=encode(photo((64, 48)), fmt, quality=90), content_type=content_type)
    assert response.status_code == 200
    assert response.mimetype == answer_type
    assert decode(response.data).format == fmt
    assert response.headers["X-Flipfleet-Flip"] == "re-encoded"


# A type the service reads, so the damage is the picture's (400), not an unsupported type (415).
@pytest.mark.parametrize("content_type", ["image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence",
                                          "image/avif", "image/avif-sequence"])
def test_a_damaged_heic_or_avif_is_a_json_400(client, content_type):
    fmt = "AVIF" if "avif" in content_type else "HEIF"
    data = encode(photo((64, 48)), fmt, quality=90)
    assert_json_error(client.post("/flip", data=data[: len(data) // 2], content_type=content_type), 400, "damaged")


def test_no_body_flips_the_sample():
    client = create_app(Settings.from_env({})).test_client()  # the default limits: the sample is 24 MP
    response = client.post("/flip")
    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert response.headers["X-Image-Size"] == "6000x4000"
    sample = decode(load_sample(None))
    assert sample.size == (6000, 4000)
    flipped = decode(response.data)
    # Compare a strip at the top of the answer with the bottom of the sample.
    top = flipped.crop((0, 0, 6000, 16)).tobytes()
    bottom = sample.crop((0, 3984, 6000, 4000)).transpose(DOWN).tobytes()
    assert sum(abs(a - b) for a, b in zip(top, bottom, strict=True)) / len(top) < 3


@pytest.mark.parametrize(
    ("query", "size", "header"),
    [
        ("", (320, 240), "lossless"),
        ("?lossless=true", (320, 240), "lossless"),
        ("?lossless=false", (320, 240), "re-encoded; asked"),
        ("?direction=horizontal", (330, 240), "re-encoded; not aligned"),  # 330 columns: not whole blocks
    ],
)
def test_the_answer_says_how_a_jpeg_was_flipped(turbojpeg, client, query, size, header):
    response = client.post(f"/flip{query}", data=encode(photo(size), "JPEG"), content_type="image/jpeg")
    assert response.status_code == 200
    assert response.headers["X-Flipfleet-Flip"] == header


def test_other_formats_say_they_were_re_encoded(client, png):
    assert client.post("/flip", data=png, content_type="image/png").headers["X-Flipfleet-Flip"] == "re-encoded"


def test_a_16_bit_picture_written_at_8_bits_says_so(client, png):
    response = client.post("/flip", data=png_16_bits("RGB"), content_type="image/png")
    assert response.status_code == 200
    assert response.headers["X-Flipfleet-Dropped"] == "bit_depth"
    assert "X-Flipfleet-Dropped" not in client.post("/flip", data=png, content_type="image/png").headers


@pytest.mark.parametrize("value", ["no", "False", "1", ""])
def test_lossless_takes_true_or_false_only(client, png, value):
    assert_json_error(client.post(f"/flip?lossless={value}", data=png, content_type="image/png"), 400, "lossless")


def test_unknown_direction_is_400(client, png):
    response = client.post("/flip?direction=sideways", data=png, content_type="image/png")
    assert_json_error(response, 400, "direction")


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"data": b"definitely not a picture", "content_type": "image/png"}, 400, "not a picture"),
        ({"data": encode(picture("RGB"), "PNG")[:300], "content_type": "image/png"}, 400, "damaged"),
        ({"data": b"", "content_type": "image/jpeg"}, 400, "empty"),
        ({"data": {}, "content_type": "multipart/form-data"}, 400, "no file"),
        ({"data": {"photo": (io.BytesIO(b"x"), "x.png")}}, 400, "photo"),
        ({"data": {"image": (io.BytesIO(b""), "x.png")}}, 400, "empty"),
        ({"data": {"image": [(io.BytesIO(b"a"), "a.png"), (io.BytesIO(b"b"), "b.png")]}}, 400, "one picture"),
        ({"data": b"x" * (2 * 1024 * 1024 + 1), "content_type": "image/png"}, 413, "over the limit of 2,097,152 bytes"),
        ({"data": {f"field{n}": "x" for n in range(1001)}, "content_type": "multipart/form-data"}, 413,
         "more than 1,000 parts"),
        ({"data": {"note": "x" * 500_001, "image": (io.BytesIO(b"x"), "x.png")}}, 413, "over 500,000 bytes"),
        ({"data": png_declaring(2_000, 1_000), "content_type": "image/png"}, 413, "pixels"),
        ({"data": png_declaring(100_000, 100_000), "content_type": "image/png"}, 413, "pixels"),
        ({"data": animation("GIF", frames=11)[0], "content_type": "image/gif"}, 413, "frames"),
        ({"data": encode(picture("RGB"), "ICO"), "content_type": "image/x-icon"}, 415, "ICO"),
        ({"data": jpeg_of_precision(12), "content_type": "image/jpeg"}, 415, "12-bit JPEG"),
        ({"data": b"<svg xmlns='http://www.w3.org/2000/svg'/>", "content_type": "image/svg+xml"}, 415, "svg"),
        ({"data": b"a=b", "content_type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        ({"data": b"{}", "content_type": "application/json"}, 415, "Content-Type"),
    ],
    ids=lambda v: v if isinstance(v, (int, str)) else "",
)
def test_bad_input_gets_a_json_4xx(client, kwargs, status, fragment):
    assert_json_error(client.post("/flip", **kwargs), status, fragment)


def test_json_404_and_405_with_allow(client):
    assert_json_error(client.get("/nowhere"), 404, "not found")
    response = client.get("/flip")
    assert_json_error(response, 405, "not allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(("path", "allowed"), [
    ("/", {"GET", "HEAD", "OPTIONS"}),
    ("/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("/flip", {"POST", "OPTIONS"}),
    ("/metrics", {"GET", "HEAD", "OPTIONS"}),
])
def test_options_is_204_with_allow_and_no_html(client, path, allowed):
    response = client.options(path)
    assert response.status_code == 204
    assert set(response.headers["Allow"].split(", ")) == allowed
    assert "Content-Type" not in response.headers
    assert response.data == b""
    assert response.headers["X-Served-By"] == "test-replica"


@pytest.mark.parametrize("error", [KeyError("qtables"), TypeError("bad argument"), RuntimeError("boom")])
def test_a_bug_of_ours_is_a_logged_500_not_a_damaged_picture(app, client, caplog, monkeypatch, png, error):
    def broken(*args):
        raise error

    # A bug in our own code around Pillow (here, the parameters chosen for writing a PNG back).
    monkeypatch.setattr(imaging.FORMATS["PNG"], "save_params", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.post("/flip", data=png, content_type="image/png", headers={"X-Request-ID": "bug-1"})
    assert_json_error(response, 500, "internal error")
    assert "unhandled error on POST /flip rid=bug-1" in caplog.text
    assert type(error).__name__ in caplog.text


def test_out_of_memory_is_503_with_retry_after(app, client, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(imaging, "flip", exhausted)
    response = client.post("/flip", data=b"x", content_type="image/png")
    assert_json_error(response, 503, "out of memory")
    assert response.headers["Retry-After"] == "1"


def test_limits_come_from_the_environment(monkeypatch, png):
    monkeypatch.setenv("FLIP_MAX_PIXELS", "100")
    monkeypatch.setenv("FLIP_REPLICA_NAME", "from-env")
    client = create_app().test_client()
    response = client.post("/flip", data=png, content_type="image/png")
    assert_json_error(response, 413, "the limit is 100")
    assert response.headers["X-Served-By"] == "from-env"


@pytest.fixture
def release(monkeypatch):
    """Flips that wait until this event is set, so that tests can fill a replica's queue."""
    event, real_flip = threading.Event(), imaging.flip

    def slow_flip(*args, **kwargs):
        event.wait(10)
        return real_flip(*args, **kwargs)

    monkeypatch.setattr(imaging, "flip", slow_flip)
    yield event
    event.set()


def test_a_full_queue_refuses_at_once_with_503_and_retry_after(app, png, release):
    gate = app.extensions["flip_gate"]
    statuses = []

    def post() -> None:
        statuses.append(app.test_client().post("/flip", data=png, content_type="image/png").status_code)

    holders = [threading.Thread(target=post) for _ in range(gate.queue)]
    for thread in holders:
        thread.start()
    try:
        assert wait_for(lambda: gate.held == gate.queue, timeout=10)  # one flipping, the rest waiting
        response = app.test_client().post("/flip", data=png, content_type="image/png")
        assert_json_error(response, 503, f"holds {gate.queue} flips")
        assert response.headers["Retry-After"] == "1"
        assert app.test_client().get("/healthz").status_code == 200  # light requests pass by
    finally:
        release.set()
        for thread in holders:
            thread.join(timeout=30)
    assert statuses == [200] * gate.queue
    assert gate.held == 0


def test_waiting_flips_run_in_the_order_they_came(settings, png, monkeypatch):
    app = create_app(dataclasses.replace(settings, queue=8))  # 7 waiting: a lucky order is 1 in 5040
    gate = app.extensions["flip_gate"]
    release, started_order, real_flip = threading.Event(), [], imaging.flip

    def recorded_flip(data, *args, **kwargs):
        started_order.append(data)
        release.wait(10)
        return real_flip(png, *args, **kwargs)

    monkeypatch.setattr(imaging, "flip", recorded_flip)
    threads = []
    for index in range(gate.queue):  # the first runs, the others wait behind it, in this order
        body = png + bytes([index])  # trailing bytes tell the requests apart; PNG ignores them
        threads.append(threading.Thread(target=lambda b=body: app.test_client().post(
            "/flip", data=b, content_type="image/png").close()))
        threads[-1].start()
        assert wait_for(lambda index=index: gate.held == index + 1, timeout=10)
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert [data[-1] for data in started_order] == list(range(gate.queue))


def test_a_client_past_its_share_gets_a_json_429_and_others_still_get_in(settings, png, release):
    app = create_app(dataclasses.replace(settings, queue=4, client_share=2))
    gate = app.extensions["flip_gate"]
    greedy = {"X-Flipfleet-Client": "10.0.0.1"}
    holders = [threading.Thread(target=lambda: app.test_client().post("/flip", data=png, content_type="image/png",
                                                                      headers=greedy).close()) for _ in range(2)]
    for thread in holders:
        thread.start()
    try:
        assert wait_for(lambda: gate.held_by("10.0.0.1") == 2, timeout=10)
        refused = app.test_client().post("/flip", data=png, content_type="image/png", headers=greedy)
        assert_json_error(refused, 429, "holds 2 flips in this replica already")
        assert refused.headers["Retry-After"] == "1"
        other = threading.Thread(target=lambda: app.test_client().post(
            "/flip", data=png, content_type="image/png", headers={"X-Flipfleet-Client": "10.0.0.2"}).close())
        other.start()
        assert wait_for(lambda: gate.held_by("10.0.0.2") == 1, timeout=10)
    finally:
        release.set()
        for thread in holders:
            thread.join(timeout=30)
        other.join(timeout=30)


def test_the_sample_is_flipped_once_per_direction_then_served_from_memory(monkeypatch):
    app = create_app(Settings.from_env({}))  # the default limits: the sample is 24 MP
    flips, real_flip = [], imaging.flip

    def counted_flip(*args, **kwargs):
        flips.append(args[1] if len(args) > 1 else kwargs.get("direction"))
        return real_flip(*args, **kwargs)

    monkeypatch.setattr(imaging, "flip", counted_flip)
    client = app.test_client()
    answers = [client.post("/flip"), client.post("/flip"), client.post("/flip?direction=horizontal"),
               client.post("/flip?direction=horizontal")]
    for answer in answers:
        answer.close()  # as waitress does once it has sent it: the metrics are taken then
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].data == answers[1].data != answers[2].data == answers[3].data
    assert flips == ["vertical", "horizontal"]
    # Only the two real flips count as flipped pixels.
    assert app.extensions["metrics"].pixels._value.get() == 2 * 6000 * 4000


def test_a_picture_too_large_for_the_express_lane_waits_its_turn_and_is_flipped(app, monkeypatch):
    gate = app.extensions["flip_gate"]
    blocker = encode(picture("RGB"), "PNG")
    large = encode(picture("RGB", (600, 600)), "PNG")  # over a quarter of the fixture's 1 MP
    release, real_flip, started = threading.Event(), imaging.flip, []

    def flip(data, direction, limits, lossless):
        started.append((len(data), limits.max_pixels))
        if data == blocker:
            release.wait(10)
        return real_flip(data, direction, limits, lossless)

    monkeypatch.setattr(imaging, "flip", flip)
    answers = {}

    def post(name: str, body: bytes, client: str) -> None:
        answers[name] = app.test_client().post("/flip", data=body, content_type="image/png",
                                               headers={"X-Flipfleet-Client": client})

    first = threading.Thread(target=post, args=("blocker", blocker, "10.0.0.1"))
    first.start()
    assert wait_for(lambda: gate.held == 1 and len(started) == 1, timeout=10)  # the blocker is flipping
    second = threading.Thread(target=post, args=("large", large, "10.0.0.2"))
    second.start()
    assert wait_for(lambda: len(started) == 2, timeout=10)  # tried in the lane, at its limits
    assert started[1] == (len(large), 250_000) and "large" not in answers
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert answers["large"].status_code == 200 and started[2] == (len(large), 1_000_000)
    assert decode(answers["large"].data).size == (600, 600)


def test_an_answer_file_reads_views_of_the_answer_and_calls_back_once_when_closed():
    data = bytes(range(256)) * 4
    answer, closed = AnswerFile(data), []
    answer.on_close.append(lambda: closed.append(True))
    assert answer.seekable() and answer.seek(0, io.SEEK_END) == len(data) and answer.tell() == len(data)
    answer.seek(0)
    first = answer.read(100)
    assert isinstance(first, memoryview) and first.obj is data and first == data[:100]  # no copy
    assert answer.tell() == 100 and answer.seek(-50, io.SEEK_CUR) == 50 and answer.read(60) == data[50:110]
    assert answer.read() == data[110:] and answer.read(10) == b"" and answer.tell() == len(data)
    answer.close()
    answer.close()
    assert answer.closed and closed == [True]
