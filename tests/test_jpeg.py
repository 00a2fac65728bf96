"""A JPEG's markers read without decoding: its header segments, its scans, the fewest bytes its frame can be."""

import pytest
from PIL import Image

from service import jpeg
from tests.pictures import encode, jpeg_declaring, many_scans_jpeg, photo


@pytest.mark.parametrize(
    ("params", "mode", "scans"),
    [({}, "RGB", 1), ({"progressive": True}, "RGB", 10), ({"progressive": True}, "L", 6),
     ({"restart_marker_blocks": 1}, "RGB", 1), ({"restart_marker_rows": 1, "progressive": True}, "RGB", 10)],
    ids=["baseline", "progressive", "progressive-grey", "restart-markers", "progressive-restarts"],
)
def test_scans_of_what_pillow_writes(params, mode, scans):
    assert jpeg.scans(encode(photo((160, 120), mode), "JPEG", **params), stop_after=1000) == scans


def test_a_crafted_many_scan_jpeg_is_counted_and_counting_stops_past_the_bound():
    data = many_scans_jpeg((64, 48), scans=500)
    assert jpeg.scans(data, stop_after=10_000) == 501
    assert jpeg.scans(data, stop_after=100) == 101


@pytest.mark.parametrize("junk", [b"\x00\x00", b"\x12", b"\xff\x00ab", b"\x00" * 1000])
def test_bytes_where_no_marker_belongs_are_skipped_as_the_decoder_skips_them(junk):
    # libjpeg warns about them and decodes every scan that follows: the count must not stop there.
    # (After a segment: after a scan, they would pass for its entropy-coded data.)
    data = many_scans_jpeg((64, 48), scans=500)
    comment = b"\xff\xfe\x00\x04ab"
    cuts = [at for at in range(len(data) - 1) if data[at:at + 2] == b"\xff\xda"]
    for at in reversed(cuts[1::50]):  # before the second scan, and here and there after it
        data = data[:at] + comment + junk + data[at:]
    assert jpeg.scans(data, stop_after=10_000) == 501


def test_an_mpo_counts_its_main_picture_only():
    data = encode(photo((120, 90)), "MPO", save_all=True, append_images=[photo((60, 45))], progressive=True)
    assert jpeg.scans(data, stop_after=1000) == 10


@pytest.mark.parametrize("data", [b"", b"not a jpeg", b"\xff\xd8", b"\xff\xd8\x00\x00\x00"])
def test_what_is_not_a_jpeg_has_no_scans(data):
    assert jpeg.scans(data, stop_after=10) == 0
    assert list(jpeg.segments(data)) == []


@pytest.mark.parametrize("params", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_the_precision_is_read_from_the_start_of_frame(params):
    data = bytearray(encode(photo((64, 48)), "JPEG", **params))
    assert jpeg.precision(bytes(data)) == 8
    (start,) = [start for marker, start, _ in jpeg.segments(data) if marker in jpeg.START_OF_FRAME]
    data[start + 4] = 12
    assert jpeg.precision(bytes(data)) == 12


@pytest.mark.parametrize("data", [b"", b"not a jpeg", b"\xff\xd8", b"\xff\xd8\xff\xc0\x00\x02"])
def test_what_has_no_start_of_frame_has_no_precision(data):
    assert jpeg.precision(data) is None


def test_segments_end_with_the_first_scan_header():
    data = encode(photo((64, 48)), "JPEG", progressive=True)
    found = list(jpeg.segments(data))
    assert found[0][1] == 2 and found[-1][0] == jpeg.SOS
    assert [marker for marker, _, _ in found].count(jpeg.SOS) == 1
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
    assert 1.9 < len(data) / jpeg.least_bytes(data) < 2.2


def test_least_bytes_counts_every_component_at_its_own_sampling():
    # 4:2:0: the 200x150 luma blocks, and a quarter as many for each chroma component.
    data = encode(Image.new("RGB", (1_600, 1_200)), "JPEG", subsampling=2)
    header = next(end for marker, _, end in jpeg.segments(data) if marker == jpeg.SOS)
    assert jpeg.least_bytes(data) - header == (200 * 150 + 2 * 100 * 75) // 8


def test_least_bytes_reads_the_claimed_size():
    assert jpeg.least_bytes(jpeg_declaring(7_000, 7_000)) > 7_000 * 7_000 / 64 / 8


def test_arithmetic_coding_has_no_floor():
    # An arithmetic coder may spend less than a bit a block.
    data = bytearray(jpeg_declaring(7_000, 7_000))
    frame = data.index(b"\xff\xc0")
    data[frame + 1] = 0xC9
    assert jpeg.least_bytes(bytes(data)) == 0


def test_segments_besides_scans_and_their_tables_are_counted_and_counting_stops_past_the_bound():
    plain = encode(photo((64, 48)), "JPEG")
    padded = plain[:-2] + b"\xff\xfe\x00\x02" * 5_000 + plain[-2:]  # comments before the EOI
    assert jpeg.counts(plain, most_scans=100, most_segments=10_000)[1] < 10
    assert (jpeg.counts(padded, most_scans=100, most_segments=10_000)[1]
            - jpeg.counts(plain, most_scans=100, most_segments=10_000)[1]) == 5_000
    assert jpeg.counts(padded, most_scans=100, most_segments=100) == (1, 101)
    # A progressive JPEG's tables before each scan are its own: 500 scans count as scans only.
    many = many_scans_jpeg((64, 48), scans=500)
    assert jpeg.counts(many, most_scans=10_000, most_segments=10) == (501, 0)
    assert jpeg.counts(many, most_scans=100, most_segments=10_000) == (101, 0)
    assert jpeg.counts(b"not a jpeg", most_scans=100, most_segments=100) == (0, 0)


@pytest.mark.parametrize(("mode", "params", "samples"), [
    ("L", {}, 1), ("RGB", {}, 1.5), ("RGB", {"subsampling": 1}, 2), ("RGB", {"subsampling": 0}, 3),
    ("CMYK", {}, 4), ("RGB", {"progressive": True}, 1.5),
], ids=["grey", "420", "422", "444", "cmyk", "progressive-420"])
def test_samples_per_pixel_come_from_the_frame_header(mode, params, samples):
    assert jpeg.samples_per_pixel(encode(photo((64, 48)).convert(mode), "JPEG", **params)) == samples


def test_no_frame_no_samples():
    assert jpeg.samples_per_pixel(b"\xff\xd8\xff\xd9") == 0
