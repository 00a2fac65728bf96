"""A JPEG's markers (service/formats/jpeg_markers.py), read without decoding: its segments, scans, precision
and the fewest bytes its frame can be; pictures refused for them before they are read."""

import os
import random
import subprocess
import time
from dataclasses import replace

import pytest
from PIL import Image

from harness import ROOT
from harness.compose import run
from service import imaging
from service.formats import jpeg, jpeg_markers
from tests.crafted_jpeg import many_scans_jpeg
from tests.pictures import encode, jpeg_declaring, jpeg_of_precision, jpeg_padded, photo


@pytest.fixture(scope="module")
def native_scan_end(tmp_path_factory):
    """jpeg_scan.c built afresh by scripts/build-native.sh; a skip without a C compiler (a failure under CI)."""
    library = tmp_path_factory.mktemp("native") / "jpeg_scan.so"
    source = ROOT / "service" / "formats" / "jpeg_scan.c"
    subprocess.run(["bash", str(ROOT / "scripts" / "build-native.sh"), str(source), str(library)], check=True)
    function = jpeg_markers.load_native_scan_end(library)
    if function is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the JPEG scan walk in C: no C compiler built it")
        pytest.skip("no C compiler to build service/formats/jpeg_scan.c (apt-get install gcc)")
    return function


@pytest.fixture(params=["python", "c"])
def walk(request, monkeypatch):
    """The scan walk in Python (the regex) or in C (jpeg_scan.c), whichever this module would load."""
    native = request.getfixturevalue("native_scan_end") if request.param == "c" else None
    monkeypatch.setattr(jpeg_markers, "_native_scan_end", native)
    return request.param


@pytest.mark.parametrize(("data", "start", "end"), [
    (b"\x11\x22\xff\xd9", 0, 2),
    (b"\xff\x00\xff\xd9", 0, 2),  # stuffing
    (b"\xff\xd0\x12\xff\xd7\xff\xd9", 0, 5),  # restart markers
    (b"\xff\xff\xff\xd9", 0, 2),  # fill: the marker is the last 0xFF's
    (b"\xff\xcf\xff\xd9", 0, 0),  # just below the restart markers
    (b"\xff\xd8", 0, 0),  # just above them
    (b"\xff\x01", 0, 0),  # TEM
    (b"\xff\xda\x00\xff\xc4", 1, 3),  # from `start`
    (b"\x00\xff", 0, None),  # a last 0xFF has no marker after it
    (b"\xff\x00\xff\xff", 0, None),
    (b"no marker", 0, None),
    (b"", 0, None),
    (b"\xff\xd9", 2, None),  # at the end
    (b"\xff\xd9", 5, None),  # past it
])
def test_a_scan_ends_at_its_first_marker_that_is_not_a_restart(walk, data, start, end):
    assert jpeg_markers.scan_end(data, start) == end


def test_the_walk_in_c_finds_what_the_regex_finds(native_scan_end, monkeypatch):
    # Bytes mostly of the kinds that matter (0xFF, stuffing, the edges of the restart markers).
    rng = random.Random(7)
    alphabet = [0xFF] * 6 + [0x00, 0xD0, 0xD7, 0xCF, 0xD8, 0x01, 0xD9]
    cases = []
    for _ in range(3_000):
        data = bytes(rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
                     for _ in range(rng.randrange(12)))
        cases.append((data, rng.randrange(len(data) + 2)))
    monkeypatch.setattr(jpeg_markers, "_native_scan_end", None)
    by_regex = [jpeg_markers.scan_end(data, start) for data, start in cases]
    monkeypatch.setattr(jpeg_markers, "_native_scan_end", native_scan_end)
    assert [jpeg_markers.scan_end(data, start) for data, start in cases] == by_regex
    assert by_regex.count(None) not in (0, len(cases))  # both kinds of answer were asked for


@pytest.mark.docker
def test_the_web_image_walks_scans_in_c(docker_images):
    loaded = run(["docker", "run", "--rm", "flipfleet-web:latest", "python", "-c",
                  "from service.formats import jpeg_markers; print(jpeg_markers.load_native_scan_end() is not None)"])
    assert loaded.stdout.strip() == "True", loaded.stderr


@pytest.mark.parametrize(
    ("params", "mode", "scans"),
    [({}, "RGB", 1), ({"progressive": True}, "RGB", 10), ({"progressive": True}, "L", 6),
     ({"restart_marker_blocks": 1}, "RGB", 1), ({"restart_marker_rows": 1, "progressive": True}, "RGB", 10)],
    ids=["baseline", "progressive", "progressive-grey", "restart-markers", "progressive-restarts"],
)
def test_scans_of_what_pillow_writes(walk, params, mode, scans):
    assert jpeg_markers.scans(encode(photo((160, 120), mode), "JPEG", **params), stop_after=1000) == scans


def test_a_crafted_many_scan_jpeg_is_counted_and_counting_stops_past_the_bound(walk):
    data = many_scans_jpeg((64, 48), scans=500)
    assert jpeg_markers.scans(data, stop_after=10_000) == 501
    assert jpeg_markers.scans(data, stop_after=100) == 101


@pytest.mark.parametrize("junk", [b"\x00\x00", b"\x12", b"\xff\x00ab", b"\x00" * 1000])
def test_bytes_where_no_marker_belongs_are_skipped_as_the_decoder_skips_them(walk, junk):
    # libjpeg warns about them and decodes every scan that follows: the count must not stop there.
    # (After a segment: after a scan, they would pass for its entropy-coded data.)
    data = many_scans_jpeg((64, 48), scans=500)
    comment = b"\xff\xfe\x00\x04ab"
    cuts = [at for at in range(len(data) - 1) if data[at:at + 2] == b"\xff\xda"]
    for at in reversed(cuts[1::50]):  # before the second scan, and here and there after it
        data = data[:at] + comment + junk + data[at:]
    assert jpeg_markers.scans(data, stop_after=10_000) == 501


def test_an_mpo_counts_its_main_picture_only(walk):
    data = encode(photo((120, 90)), "MPO", save_all=True, append_images=[photo((60, 45))], progressive=True)
    assert jpeg_markers.scans(data, stop_after=1000) == 10


@pytest.mark.parametrize("data", [b"", b"not a jpeg", b"\xff\xd8", b"\xff\xd8\x00\x00\x00"])
def test_what_is_not_a_jpeg_has_no_scans(data):
    assert jpeg_markers.scans(data, stop_after=10) == 0
    assert list(jpeg_markers.segments(data)) == []


@pytest.mark.parametrize("params", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_the_precision_is_read_from_the_start_of_frame(params):
    data = bytearray(encode(photo((64, 48)), "JPEG", **params))
    assert jpeg_markers.precision(bytes(data)) == 8
    (start,) = [start for marker, start, _ in jpeg_markers.segments(data) if marker in jpeg_markers.START_OF_FRAME]
    data[start + 4] = 12
    assert jpeg_markers.precision(bytes(data)) == 12


@pytest.mark.parametrize("data", [b"", b"not a jpeg", b"\xff\xd8", b"\xff\xd8\xff\xc0\x00\x02"])
def test_what_has_no_start_of_frame_has_no_precision(data):
    assert jpeg_markers.precision(data) is None


def test_segments_end_with_the_first_scan_header():
    data = encode(photo((64, 48)), "JPEG", progressive=True)
    found = list(jpeg_markers.segments(data))
    assert found[0][1] == 2 and found[-1][0] == jpeg_markers.SOS
    assert [marker for marker, _, _ in found].count(jpeg_markers.SOS) == 1
    for (_, _, end), (_, start, _) in zip(found, found[1:], strict=False):
        assert end == start  # contiguous: nothing between two header segments


@pytest.mark.parametrize(
    ("mode", "params"),
    [("RGB", {"optimize": True}), ("RGB", {"progressive": True}), ("L", {"optimize": True}),
     ("RGB", {"subsampling": 0, "optimize": True}), ("CMYK", {"optimize": True})],
)
def test_least_bytes_is_one_bit_a_block_half_of_what_a_one_colour_picture_takes(mode, params):
    # One colour with optimised tables: a one-bit DC code and a one-bit end of block, every block.
    data = encode(Image.new(mode, (1_600, 1_200)), "JPEG", quality=1, **params)
    assert 1.9 < len(data) / jpeg_markers.least_bytes(data) < 2.2


def test_least_bytes_counts_every_component_at_its_own_sampling():
    # 4:2:0: the 200x150 luma blocks, and a quarter as many for each chroma component.
    data = encode(Image.new("RGB", (1_600, 1_200)), "JPEG", subsampling=2)
    header = next(end for marker, _, end in jpeg_markers.segments(data) if marker == jpeg_markers.SOS)
    assert jpeg_markers.least_bytes(data) - header == (200 * 150 + 2 * 100 * 75) // 8


def test_least_bytes_reads_the_claimed_size():
    assert jpeg_markers.least_bytes(jpeg_declaring(7_000, 7_000)) > 7_000 * 7_000 / 64 / 8


def test_arithmetic_coding_has_no_floor():
    # An arithmetic coder may spend less than a bit a block.
    data = bytearray(jpeg_declaring(7_000, 7_000))
    frame = data.index(b"\xff\xc0")
    data[frame + 1] = 0xC9
    assert jpeg_markers.least_bytes(bytes(data)) == 0


def test_segments_besides_scans_and_their_tables_are_counted_and_counting_stops_past_the_bound():
    plain = encode(photo((64, 48)), "JPEG")
    padded = plain[:-2] + b"\xff\xfe\x00\x02" * 5_000 + plain[-2:]  # comments before the EOI
    assert jpeg_markers.counts(plain, most_scans=100, most_segments=10_000)[1] < 10
    assert (jpeg_markers.counts(padded, most_scans=100, most_segments=10_000)[1]
            - jpeg_markers.counts(plain, most_scans=100, most_segments=10_000)[1]) == 5_000
    assert jpeg_markers.counts(padded, most_scans=100, most_segments=100) == (1, 101)
    # A progressive JPEG's tables before each scan are its own: 500 scans count as scans only.
    many = many_scans_jpeg((64, 48), scans=500)
    assert jpeg_markers.counts(many, most_scans=10_000, most_segments=10) == (501, 0)
    assert jpeg_markers.counts(many, most_scans=100, most_segments=10_000) == (101, 0)
    assert jpeg_markers.counts(b"not a jpeg", most_scans=100, most_segments=100) == (0, 0)


@pytest.mark.parametrize(("mode", "params", "samples"), [
    ("L", {}, 1), ("RGB", {}, 1.5), ("RGB", {"subsampling": 1}, 2), ("RGB", {"subsampling": 0}, 3),
    ("CMYK", {}, 4), ("RGB", {"progressive": True}, 1.5),
], ids=["grey", "420", "422", "444", "cmyk", "progressive-420"])
def test_samples_per_pixel_come_from_the_frame_header(mode, params, samples):
    assert jpeg_markers.samples_per_pixel(encode(photo((64, 48)).convert(mode), "JPEG", **params)) == samples


def test_no_frame_no_samples():
    assert jpeg_markers.samples_per_pixel(b"\xff\xd8\xff\xd9") == 0


@pytest.mark.parametrize("bits", [12, 16])
def test_a_jpeg_of_more_than_8_bits_a_sample_is_unsupported(bits):
    # Pillow reads 8-bit JPEG only: the picture is one the service recognises but cannot read.
    with pytest.raises(imaging.UnsupportedFormat, match=f"{bits}-bit JPEG pictures are not supported"):
        imaging.flip(jpeg_of_precision(bits))


@pytest.mark.parametrize("lossless", [True, False])
def test_a_jpeg_of_more_segments_than_any_picture_has_is_refused_before_it_is_read(lossless):
    # TurboJPEG's transform of 100,000 empty comments takes seconds, in one call the deadline cannot stop.
    with pytest.raises(imaging.TooCostly, match="segments"):
        imaging.flip(jpeg_padded(jpeg.MOST_SEGMENTS), lossless=lossless)
    assert imaging.flip(jpeg_padded(jpeg.MOST_SEGMENTS - 10), lossless=lossless).height == 16


def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding():
    poison = many_scans_jpeg((8000, 6000), scans=20_000)  # minutes of decoding, 1.9 MB
    started = time.perf_counter()
    with pytest.raises(imaging.TooCostly, match="more than 100 scans"):
        imaging.flip(poison, limits=replace(imaging.NO_LIMITS, max_scans=100))
    print(f"a {len(poison):,}-byte JPEG of 20,001 scans refused in {(time.perf_counter() - started) * 1000:.1f} ms")
    within = many_scans_jpeg((64, 48), scans=99)  # 100 scans in all: the limit itself
    assert imaging.flip(within, limits=replace(imaging.NO_LIMITS, max_scans=100)).format == "JPEG"


@pytest.mark.parametrize("path", [True, False], ids=["lossless", "re-encoded"])
def test_stray_bytes_between_segments_do_not_hide_scans_from_the_limit(path):
    # libjpeg skips them with a warning and decodes every scan after them.
    poison = many_scans_jpeg((4000, 3000), scans=1000)
    second_scan = poison.index(b"\xff\xda", poison.index(b"\xff\xda") + 2)
    poison = poison[:second_scan] + b"\xff\xfe\x00\x04ab\x00\x00" + poison[second_scan:]
    with pytest.raises(imaging.TooCostly, match="more than 100 scans"):
        imaging.flip(poison, lossless=path, limits=replace(imaging.NO_LIMITS, max_scans=100))
