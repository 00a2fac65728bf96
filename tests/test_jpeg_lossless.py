"""service.jpeg_lossless: lossless JPEG transforms through libturbojpeg."""

import concurrent.futures
import random
import struct
import threading

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms

from service import jpeg as markers
from service import jpeg_lossless
from service.jpeg_lossless import DamagedJpeg, NotPerfect, Unavailable, transform
from tests.pictures import decode, encode, photo, picture

T = Image.Transpose
DOWN, ACROSS = T.FLIP_TOP_BOTTOM, T.FLIP_LEFT_RIGHT
SIZE = (320, 240)  # a multiple of every MCU size: every transform is perfect


# Every test here needs libturbojpeg (conftest.py).
pytestmark = pytest.mark.usefixtures("turbojpeg")


# name -> (mode, save params): what Pillow writes, each coding and subsampling.
SOURCES = {
    "4:2:0": ("RGB", {"subsampling": "4:2:0"}),
    "4:2:2": ("RGB", {"subsampling": "4:2:2"}),
    "4:4:4": ("RGB", {"subsampling": "4:4:4"}),
    "grey": ("L", {}),
    "CMYK": ("CMYK", {}),  # Pillow writes Adobe APP14 CMYK
    "progressive": ("RGB", {"progressive": True}),
    "progressive 4:4:4": ("RGB", {"progressive": True, "subsampling": "4:4:4"}),
}


def jpeg(name: str, size=SIZE, quality: int = 90, im: Image.Image | None = None, **extra) -> bytes:
    mode, params = SOURCES[name]
    return encode(im or photo(size, mode), "JPEG", quality=quality, **params, **extra)


def largest_difference(a: Image.Image, b: Image.Image) -> int:
    assert a.mode == b.mode and a.size == b.size
    extrema = ImageChops.difference(a, b).getextrema()
    return extrema[1] if a.mode == "L" else max(high for _, high in extrema)


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment) of every header segment."""
    return [(marker, data[start:end]) for marker, start, end in markers.segments(data)]


def app_segments(data: bytes) -> list[bytes]:
    return [seg for marker, seg in segments(data) if 0xE0 <= marker <= 0xEF or marker == 0xFE]


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
    im = photo(SIZE, mode) if content == "photo" else picture(mode, (96, 64))
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


def exif(**tags) -> Image.Exif:
    result = Image.Exif()
    for name, value in tags.items():
        result[ExifTags.Base[name]] = value
    return result


def test_markers_survive_but_the_orientation():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = jpeg(
        "4:2:0", icc_profile=icc, exif=exif(Orientation=6, Make="Acme").tobytes(),
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>", comment=b"a comment", dpi=(300, 300),
    )

    result = transform(source, DOWN)

    flipped = decode(result)
    assert ExifTags.Base.Orientation not in flipped.getexif()
    assert flipped.getexif()[ExifTags.Base.Make] == "Acme"
    assert flipped.info["icc_profile"] == icc
    # Every APPn and COM segment but the EXIF, byte for byte, in the same order.
    def not_exif(data):
        return [seg for seg in app_segments(data) if not seg[4:].startswith(b"Exif")]
    assert not_exif(result) == not_exif(source)
    assert len(app_segments(result)) == len(app_segments(source))


@pytest.mark.parametrize("size", [SIZE, (250, 250)], ids=["aligned", "not aligned"])
def test_no_operation_leaves_the_coefficients_and_takes_out_the_orientation(size):
    plain = jpeg("4:2:0", size=size)
    oriented = jpeg("4:2:0", size=size, exif=exif(Orientation=3, Make="Acme").tobytes())
    assert transform(plain, None) == plain
    result = transform(oriented, None)
    assert dict(decode(result).getexif()) == {ExifTags.Base.Make: "Acme"}
    assert decode(result).tobytes() == decode(oriented).tobytes()


# Pillow takes the orientation from XMP when the EXIF has none; left there, a viewer reading XMP
# would turn the picture again.
@pytest.mark.parametrize("xmp", [
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>',
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"><tiff:Orientation>6</tiff:Orientation></rdf:Description>',
], ids=["attribute", "element"])
def test_the_xmp_orientation_is_taken_out_too(xmp):
    source = jpeg("4:2:0", xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + xmp + b"</x:xmpmeta>")
    assert decode(source).getexif()[ExifTags.Base.Orientation] == 6
    result = transform(source, DOWN)
    assert ExifTags.Base.Orientation not in decode(result).getexif()
    assert b"Orientation" not in decode(result).info["xmp"] and b"rdf:Description" in decode(result).info["xmp"]


def test_an_exif_without_orientation_is_kept_byte_for_byte():
    source = jpeg("4:2:0", exif=exif(Make="Acme", Model="Roadrunner").tobytes())
    assert app_segments(transform(source, DOWN)) == app_segments(source)


def exif_with_thumbnail(order: str) -> bytes:
    """EXIF of a Make tag in IFD0, and IFD1 holding a 32x16 JPEG thumbnail after it."""
    thumbnail = encode(photo((32, 16)), "JPEG")
    ifd1 = 8 + 2 + 12 + 4
    thumbnail_at = ifd1 + 2 + 3 * 12 + 4
    magic = b"II*\0" if order == "<" else b"MM\0*"
    tiff = (magic + struct.pack(order + "IH", 8, 1) + struct.pack(order + "HHI", 0x010F, 2, 3) + b"Mk\0\0"
            + struct.pack(order + "IH", ifd1, 3)
            + struct.pack(order + "HHIHH", 0x0103, 3, 1, 6, 0)  # Compression: JPEG
            + struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_at) + struct.pack(order + "HHII", 0x0202, 4, 1,
                                                                                      len(thumbnail))
            + b"\0\0\0\0" + thumbnail)
    return b"Exif\0\0" + tiff


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_transform_unlinks_the_exif_thumbnail_and_keeps_the_rest(order):
    # The thumbnail is not transformed: viewers that show it would show the picture unflipped.
    source = jpeg("4:2:0", exif=exif_with_thumbnail(order))
    assert decode(source).getexif().get_ifd(ExifTags.IFD.IFD1)

    kept = decode(transform(source, DOWN)).getexif()

    assert kept.get_ifd(ExifTags.IFD.IFD1) == {}
    assert kept[ExifTags.Base.Make] == "Mk"
    assert app_segments(jpeg_lossless.without_orientation(source)) == app_segments(source)


SHORT, LONG = 3, 4
WIDTH, HEIGHT = jpeg_lossless.PIXEL_DIMENSIONS


def exif_with_dimensions(order: str, dimensions: dict[int, tuple[int, int]]) -> bytes:
    """EXIF of a Make tag and the Exif directory's pointer in IFD0, and that directory holding
    `dimensions`: tag -> (type, value)."""
    exif_directory = 8 + 2 + 2 * 12 + 4
    ifd0 = (struct.pack(order + "H", 2) + struct.pack(order + "HHI", 0x010F, 2, 3) + b"Mk\0\0"
            + struct.pack(order + "HHII", ExifTags.IFD.Exif, LONG, 1, exif_directory) + b"\0\0\0\0")
    entries = [struct.pack(order + "HHI", tag, kind, 1) + struct.pack(order + ("HH" if kind == SHORT else "I"),
                                                                       value, *([0] if kind == SHORT else []))
               for tag, (kind, value) in sorted(dimensions.items())]
    return (b"Exif\0\0" + (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8) + ifd0
            + struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\0\0\0\0")


def exif_segment(data: bytes) -> bytes:
    (segment,) = [seg for seg in app_segments(data) if seg[4:].startswith(b"Exif")]
    return segment


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(("stored", "turned"), [
    ({WIDTH: (SHORT, 320), HEIGHT: (SHORT, 240)}, {WIDTH: (SHORT, 240), HEIGHT: (SHORT, 320)}),
    ({WIDTH: (LONG, 320), HEIGHT: (LONG, 240)}, {WIDTH: (LONG, 240), HEIGHT: (LONG, 320)}),
    ({WIDTH: (SHORT, 320), HEIGHT: (LONG, 240)}, {WIDTH: (LONG, 240), HEIGHT: (SHORT, 320)}),
    ({WIDTH: (LONG, 320)}, {HEIGHT: (LONG, 320)}),
], ids=["shorts", "longs", "each value its own type", "width alone"])
def test_a_quarter_turn_swaps_the_exif_width_and_height_and_keeps_the_rest(order, stored, turned):
    # Without an orientation tag the EXIF is not rewritten by Pillow: only these bytes change.
    source = jpeg("4:2:0", exif=exif_with_dimensions(order, stored))
    assert decode(source).getexif().get_ifd(ExifTags.IFD.Exif) == {tag: value for tag, (_, value) in stored.items()}

    for operation in (T.ROTATE_90, T.TRANSPOSE):
        result = transform(source, operation)
        assert decode(result).size == SIZE[::-1]
        assert exif_segment(result) == exif_segment(jpeg("4:2:0", exif=exif_with_dimensions(order, turned)))
    assert exif_segment(transform(source, DOWN)) == exif_segment(source)


def test_a_quarter_turn_with_an_orientation_tag_swaps_the_exif_width_and_height():
    tags = exif(Orientation=6, Make="Acme")
    tags.get_ifd(ExifTags.IFD.Exif).update({WIDTH: SIZE[0], HEIGHT: SIZE[1]})
    result = decode(transform(jpeg("4:2:0", exif=tags.tobytes()), T.ROTATE_270))
    directory = result.getexif().get_ifd(ExifTags.IFD.Exif)
    assert (directory[WIDTH], directory[HEIGHT]) == result.size == SIZE[::-1]


@pytest.mark.parametrize("operation", [DOWN, T.ROTATE_270], ids=["flip", "quarter turn"])
def test_the_orientation_is_taken_out_in_place_and_every_other_byte_of_the_exif_stays(operation):
    # A maker note holds offsets into the EXIF that no tool rewrites: the EXIF must not move.
    maker_note = b"Acme\0\x01" + bytes(range(200))
    tags = exif(Orientation=6, Make="Acme", Model="Roadrunner", Software="flipfleet")
    tags.get_ifd(ExifTags.IFD.Exif).update({0x927C: maker_note, WIDTH: SIZE[0], HEIGHT: SIZE[1]})
    source = jpeg("4:2:0", exif=tags.tobytes())
    before, after = exif_segment(source), exif_segment(transform(source, operation))

    assert len(after) == len(before)
    kept = decode(transform(source, operation)).getexif()
    assert {tag: kept[tag] for tag in kept if tag != ExifTags.IFD.Exif} == {
        tag: value for tag, value in tags.items() if tag != ExifTags.Base.Orientation}
    directory = kept.get_ifd(ExifTags.IFD.Exif)
    assert directory[0x927C] == maker_note
    turned = operation == T.ROTATE_270
    assert (directory[WIDTH], directory[HEIGHT]) == (SIZE[::-1] if turned else SIZE)
    # IFD0 (at 8, after the 4+6-byte segment header and the TIFF header) is all that moved.
    ifd0 = 4 + 6 + 8
    order = {b"II": "little", b"MM": "big"}[before[10:12]]
    entries = int.from_bytes(before[ifd0 : ifd0 + 2], order)
    assert int.from_bytes(after[ifd0 : ifd0 + 2], order) == entries - 1
    ifd0_end = ifd0 + 2 + 12 * entries + 4
    unchanged = slice(ifd0_end, None)
    if turned:  # the Exif directory's width and height entries change places' values
        assert after[unchanged] != before[unchanged]
    else:
        assert after[unchanged] == before[unchanged]
    assert after[ifd0_end - 12 : ifd0_end] == bytes(12)


def test_without_orientation():
    source = jpeg("4:2:0", exif=exif(Orientation=8, Make="Acme").tobytes())
    result = jpeg_lossless.without_orientation(source)
    assert dict(decode(result).getexif()) == {ExifTags.Base.Make: "Acme"}
    assert result[-1000:] == source[-1000:]


def test_an_mpo_gives_its_main_picture_as_a_plain_jpeg():
    main = photo(SIZE)
    mpo = encode(main, "MPO", save_all=True, append_images=[photo((160, 120))], quality=90)
    assert decode(mpo).format == "MPO"

    result = transform(mpo, DOWN)

    assert not any(seg[4:].startswith(b"MPF\x00") for seg in app_segments(result))
    assert decode(result).format == "JPEG"
    assert getattr(decode(result), "n_frames", 1) == 1
    assert result == transform(encode(main, "JPEG", quality=90), DOWN)


def test_what_follows_the_end_of_the_picture_is_dropped():
    source = jpeg("4:2:0")
    assert transform(source + b"\x00trailing bytes\xff\xd9", DOWN) == transform(source, DOWN)


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
