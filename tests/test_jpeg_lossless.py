"""service/formats/jpeg_lossless.py: lossless JPEG transforms through libturbojpeg: the coefficients, codings,
sizes, damaged data, the library."""

import concurrent.futures
import random
import threading

import pytest
from PIL import Image, ImageChops

from service.formats import jpeg_lossless
from service.formats.jpeg_lossless import DamagedJpeg, NotPerfect, Unavailable, transform
from tests.flips import ALIGNED, SOURCES, jpeg
from tests.pictures import decode, photo, picture

T = Image.Transpose
DOWN, ACROSS = T.FLIP_TOP_BOTTOM, T.FLIP_LEFT_RIGHT


# Every test here needs libturbojpeg (conftest.py).
pytestmark = pytest.mark.usefixtures("turbojpeg")


def largest_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.mode == b.mode and a.size == b.size
    extrema = ImageChops.difference(a, b).getextrema()
    return extrema[1] if a.mode == "L" else max(high for _, high in extrema)


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("direction", [DOWN, ACROSS], ids=["vertical", "horizontal"])
def test_flipping_twice_gives_the_source_back(name, direction):
    source = jpeg(name)
    once = transform(source, direction)
    assert once != source
    assert transform(once, direction) == source


# Restart markers and optimised Huffman tables: TurboJPEG 2.1's transform writes neither, so two
# flips give the same picture as Pillow writes without them (the same coefficients), not the source.
@pytest.mark.parametrize(
    "extra",
    [{"restart_marker_blocks": 4}, {"restart_marker_rows": 1}, {"optimize": True}],
    ids=lambda extra: next(iter(extra)),
)
def test_flipping_twice_keeps_the_coefficients_not_restarts_or_optimised_tables(extra):
    plain = jpeg("4:2:0")
    source = jpeg("4:2:0", **extra)
    assert source != plain
    assert transform(transform(source, DOWN), DOWN) == plain


@pytest.mark.parametrize("progressive", [False, True])
def test_the_coding_is_kept(progressive):
    source = jpeg("4:2:0", progressive=progressive)
    result = decode(transform(source, DOWN))
    assert bool(result.info.get("progressive")) is progressive
    assert result.format == "JPEG"


@pytest.mark.parametrize(("sof", "reason"), [
    (0xC3, "lossless coding"), (0xC5, "hierarchical coding"), (0xC9, "arithmetic coding"), (0xCA, "arithmetic coding"),
], ids=["lossless", "hierarchical", "arithmetic", "arithmetic progressive"])
def test_codings_turbojpeg_would_change_are_not_perfect(sof, reason):
    # TurboJPEG 2.1 writes Huffman coding only: an arithmetic source would come out re-coded.
    data = bytearray(jpeg("4:2:0"))
    data[data.index(b"\xff\xc0") + 1] = sof
    with pytest.raises(NotPerfect, match="is not transformed losslessly") as raised:
        transform(bytes(data), DOWN)
    assert raised.value.reason == reason


# The largest difference from Pillow's transpose of the decoded source, by source and operation.
# The coefficients are exact (flipping twice gives the source back); what differs is the decoder's
# rounding: its first IDCT pass rounds negated values asymmetrically (odd horizontal frequencies
# change sign on a horizontal flip, and a transpose swaps the passes), and fancy chroma
# upsampling alternates its rounding bias across columns. A vertical flip is exact everywhere.
# Measured over photo and noise pictures at qualities 50, 90 and 100; 4:2:2 turned becomes 4:4:0.
BOUNDS = {"4:2:0": 3, "4:2:2": 5, "4:4:4": 3, "grey": 1, "CMYK": 1, "progressive": 3, "progressive 4:4:4": 3}


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("operation", list(T), ids=lambda op: op.name)
@pytest.mark.parametrize("content", ["photo", "noise"])
def test_pixels_are_pillows_transpose_of_the_source(name, operation, content):
    mode = SOURCES[name][0]
    im = photo(ALIGNED, mode) if content == "photo" else picture(mode, (96, 64))
    source = jpeg(name, quality=90 if content == "photo" else 100, im=im)
    expected = decode(source).transpose(operation)

    result = decode(transform(source, operation))

    assert result.size == expected.size
    bound = 0 if operation is DOWN else BOUNDS[name]
    assert largest_difference(result, expected) <= bound


@pytest.mark.parametrize(
    ("size", "operation", "perfect"),
    [
        ((320, 250), DOWN, False),  # 250 rows: not a multiple of 4:2:0's 16
        ((320, 250), ACROSS, True),
        ((320, 250), T.ROTATE_180, False),
        ((250, 240), ACROSS, False),
        ((250, 240), DOWN, True),
        ((250, 250), T.TRANSPOSE, True),  # the partial MCUs stay at the right and bottom
        ((250, 250), T.TRANSVERSE, False),
    ],
)
def test_sizes_that_do_not_allow_a_perfect_transform(size, operation, perfect):
    source = jpeg("4:2:0", size=size)
    if not perfect:
        with pytest.raises(NotPerfect, match="not perfect") as raised:
            transform(source, operation)
        assert raised.value.reason == "not aligned"
        return
    result = decode(transform(source, operation))
    assert result.size == decode(source).transpose(operation).size
    assert largest_difference(result, decode(source).transpose(operation)) <= BOUNDS["4:2:0"]


@pytest.mark.parametrize(
    ("name", "operation", "mcu"),
    [
        ("4:4:4", None, (8, 8)),
        ("4:2:2", None, (16, 8)),
        ("4:2:0", None, (16, 16)),
        ("grey", None, (8, 8)),
        ("CMYK", None, (8, 8)),
        ("4:2:2", T.TRANSPOSE, (8, 16)),  # 4:2:2 transposed is 4:4:0
    ],
)
def test_mcu_size(name, operation, mcu):
    source = jpeg(name)
    assert jpeg_lossless.mcu_size(transform(source, operation) if operation else source) == mcu


def damaged() -> dict[str, bytes]:
    source = jpeg("4:2:0")
    scan = source.index(b"\xff\xda")
    corrupt = bytearray(source)
    corrupt[scan + 500 : scan + 540] = bytes(range(200, 240))
    cases = {f"cut at {cut}": source[:cut] for cut in (1, 2, 3, 20, scan - 10, scan + 20, len(source) // 2)}
    cases.update({
        "without EOI": source[:-2],
        "scan data overwritten": bytes(corrupt),
        "not a JPEG": b"GIF89a" + source[6:],
        "empty": b"",
        "junk before a marker": source[:20] + b"\x00\x01\x02" + source[20:],
    })
    for seed in range(5):
        cases[f"random {seed}"] = b"\xff\xd8" + random.Random(seed).randbytes(5000)
    return cases


DAMAGED = damaged()


# Every libjpeg warning counts as damage: tjTransform fails on one, at once with STOPONWARNING.
# Pillow refuses truncated JPEGs too, but flips one with junk before a marker.
@pytest.mark.parametrize("data", list(DAMAGED.values()), ids=list(DAMAGED))
@pytest.mark.parametrize("operation", [DOWN, ACROSS, T.ROTATE_90], ids=lambda op: op.name)
def test_damaged_data_is_damaged_jpeg(data, operation):
    with pytest.raises(DamagedJpeg, match="damaged or truncated"):
        transform(data, operation)


def test_threads_transform_at_once():
    sources = [jpeg("4:2:0", size=(640, 480), im=picture("RGB", (640, 480), seed)) for seed in range(4)]
    operations = [DOWN, ACROSS, T.ROTATE_90, T.TRANSVERSE]
    expected = [transform(s, op) for s, op in zip(sources, operations, strict=True)]
    start = threading.Barrier(4)

    def work(index):
        start.wait()
        return [transform(sources[index], operations[index]) for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for index, outputs in enumerate(results):
        assert all(out == expected[index] for out in outputs)


@pytest.fixture
def no_library(monkeypatch):
    """The loader as on a machine without libturbojpeg."""
    monkeypatch.setattr(jpeg_lossless, "_loaded", [])
    monkeypatch.setattr(jpeg_lossless.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(jpeg_lossless, "SONAME", "libturbojpeg-not-installed.so.0")


def test_without_the_library(no_library):
    source = jpeg("4:2:0")
    assert not jpeg_lossless.available()
    with pytest.raises(Unavailable):
        transform(source, DOWN)
    with pytest.raises(Unavailable):
        jpeg_lossless.mcu_size(source)


def test_the_library_is_loaded_once(monkeypatch):
    calls = []
    load = jpeg_lossless._load
    monkeypatch.setattr(jpeg_lossless, "_loaded", [])
    monkeypatch.setattr(jpeg_lossless, "_load", lambda: calls.append(1) or load())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: jpeg_lossless.available(), range(32)))
    assert calls == [1]


def test_the_operation_must_be_a_transpose():
    with pytest.raises(ValueError):
        transform(jpeg("4:2:0"), 42)
