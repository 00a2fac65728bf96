"""TIFF pages (service/formats/tiff.py): each page its own orientation, metadata and compression."""

import io
import random
import struct
from dataclasses import replace

import pytest
from PIL import ExifTags, Image, ImageOps, TiffImagePlugin

from service import imaging
from service.formats import tiff
from tests.flips import EXIF_DIRECTORY, SRGB, cornered, exif_tags, flips_exactly, handmade_tiff, tiff_entries
from tests.pictures import (
    SIZE,
    decode,
    encode,
    picture,
    png_16_bits,
    tiff_with_later_pages_exif,
)


def _without_tiff_tag(data, drop):
    """`data` with tag `drop` taken out of every directory (entries shifted up, count less one)."""
    out = bytearray(data)
    for ifd in sorted({ifd for ifd, _, tag, _ in tiff_entries(data) if tag == drop}):
        (count,) = struct.unpack("<H", out[ifd : ifd + 2])
        entries = [out[ifd + 2 + 12 * i : ifd + 14 + 12 * i] for i in range(count)]
        kept = [entry for entry in entries if struct.unpack("<H", entry[:2])[0] != drop]
        tail = out[ifd + 2 + 12 * count : ifd + 6 + 12 * count]  # the next directory's offset
        out[ifd : ifd + 6 + 12 * count] = (
            struct.pack("<H", len(kept)) + b"".join(kept) + tail + bytes(12 * (count - len(kept)))
        )
    assert drop not in {tag for *_, tag, _ in tiff_entries(bytes(out))}
    return bytes(out)


@pytest.mark.parametrize(("deflate", "directory", "dropped"), [
    (False, False, ()), (True, False, ()), (True, True, ("exif",)),
])
def test_16_bit_rgba_tiff_flips_as_pillow_reads_it(deflate, directory, dropped):
    # 16 bits a sample, associated alpha ("RGBa;16"): Pillow reads it as 8-bit RGBA, which says
    # so. Its own BitsPerSample, ExtraSamples... are not written back over the RGBA that is written.
    dropped = (*dropped, imaging.HIGH_BIT_DEPTH)
    tags = {ExifTags.Base.Software: "Pixelmator 3.6", ExifTags.Base.InterColorProfile: SRGB}
    if directory:
        tags[ExifTags.IFD.Exif] = EXIF_DIRECTORY
    pixels = random.Random(5).randbytes(SIZE[0] * SIZE[1] * 8)
    source = handmade_tiff(SIZE, (16, 16, 16, 16), 2, pixels, extra=(1,), deflate=deflate, tags=tags)
    assert decode(source).mode == "RGBA"

    result, flipped = flips_exactly(source)

    assert result.dropped == dropped
    assert flipped.tag_v2[258] == (8, 8, 8, 8) and flipped.tag_v2[338] == (2,)  # the writer's own
    assert flipped.info["icc_profile"] == SRGB
    assert flipped.getexif()[ExifTags.Base.Software] == "Pixelmator 3.6"


def _one_tiff_of(*pages):
    """One TIFF of the single-page TIFFs `pages`, in order (Pillow's own appender moves their offsets)."""
    out = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(out) as appender:
        for page in pages:
            appender.write(page)
            appender.newFrame()
    return out.getvalue()


def _tiff_16_bits(mode):
    bands = {"RGB": 3, "RGBA": 4}[mode]
    pixels = random.Random(6).randbytes(SIZE[0] * SIZE[1] * bands * 2)
    return handmade_tiff(SIZE, (16,) * bands, 2, pixels, extra=(2,) if mode == "RGBA" else None)


# 16 bits a sample that Pillow decodes to an 8-bit mode, which its writers write: the flip names
# the depth lost. Its 16-bit grey (I;16) stays 16 bits, and 8 bits have nothing to lose.
@pytest.mark.parametrize(("source", "narrowed", "bits"), [
    (png_16_bits("RGB"), True, 8),
    (png_16_bits("RGBA"), True, 8),
    (png_16_bits("LA"), True, 8),
    (_tiff_16_bits("RGB"), True, 8),
    (_tiff_16_bits("RGBA"), True, 8),
    (_one_tiff_of(encode(picture("RGB"), "TIFF"), _tiff_16_bits("RGB")), True, 8),
    (png_16_bits("L"), False, 16),
    (encode(picture("I;16"), "TIFF"), False, 16),
    (encode(picture("RGB"), "PNG"), False, 8),
    (encode(picture("RGB"), "TIFF"), False, 8),
], ids=["png-rgb-16", "png-rgba-16", "png-la-16", "tiff-rgb-16", "tiff-rgba-16", "tiff-second-page-rgb-16",
        "png-i16", "tiff-i16", "png-rgb-8", "tiff-rgb-8"])
def test_a_flip_that_writes_16_bits_a_sample_at_8_says_so(source, narrowed, bits):
    result, flipped = flips_exactly(source)

    assert result.dropped == ((imaging.HIGH_BIT_DEPTH,) if narrowed else ())
    if result.format == "PNG":
        assert result.data[24] == bits  # the IHDR's bit depth
    else:
        flipped.seek(result.frames - 1)
        assert set(flipped.tag_v2[258]) == {bits}


@pytest.mark.parametrize("second", ["F", "I;16", "L"])
def test_tiff_pages_of_other_modes_without_rows_per_strip(second):
    # The first page's ColorMap was written back into every page: "Requiring 12884901888 items
    # for Colormap" (a ValueError, a 500) for a float page after a palette one.
    pages = [picture("P"), picture(second) if second != "F" else Image.new("F", SIZE, 0.5)]
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    exif=exif_tags(Software="flipfleet"), compression="tiff_adobe_deflate")
    source = _without_tiff_tag(source, 278)  # RowsPerStrip

    result, flipped = flips_exactly(source)

    assert (result.frames, result.dropped) == (2, ())
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"


def test_tiff_pages_keep_their_own_compression():
    # The first page's compression was the default of every page: CCITT Group 4 for a
    # greyscale page ("Bits/sample must be 1"), the TIFF refused as damaged, a 400.
    bilevel, grey = picture("1"), picture("L")
    grey.encoderinfo = {"compression": "tiff_lzw"}  # what Pillow writes this page with
    source = encode(bilevel, "TIFF", save_all=True, append_images=[grey], compression="group4")

    result, flipped = flips_exactly(source)

    assert result.dropped == ()
    assert flipped.info["compression"] == "group4"
    flipped.seek(1)
    assert flipped.info["compression"] == "tiff_lzw"


def test_a_later_tiff_pages_exif_directory_is_not_read():
    # Nothing counts a later page's EXIF directory (ifd.counts), so nothing may read it: later
    # pages pointing at one directory of 30,000 tags took the whole deadline.
    source = tiff_with_later_pages_exif(pages=5, entries=30_000)
    result = imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_seconds=2))
    assert (result.frames, result.dropped) == (5, ("exif",))


def test_a_later_tiff_page_in_a_resolution_of_no_unit_gets_none_not_an_earlier_pages():
    # Pillow leaves the first page's dpi in info when it reads a page of a unitless resolution.
    first, second = cornered((40, 30)), cornered((40, 30))
    second.encoderinfo = {"dpi": None, "resolution_unit": 1, "x_resolution": 72, "y_resolution": 72}
    source = encode(first, "TIFF", save_all=True, append_images=[second], dpi=(300, 300))
    pages = Image.open(io.BytesIO(source))
    pages.seek(1)
    assert (pages.tag_v2[tiff.RESOLUTION_UNIT], pages.info["dpi"]) == (1, (300, 300))  # stale
    result = imaging.flip(source)
    assert [page[2] for page in _tiff_page_metadata(result.data)] == [(300.0, 300.0), None]


def _tiff_pages(orientations: list[int], compression: str) -> bytes:
    """A TIFF of 40x30 pages, each with its own Orientation tag in its own directory."""
    pages = [cornered((40, 30)) for _ in orientations]
    for page, orientation in zip(pages[1:], orientations[1:], strict=True):
        page.encoderinfo = {"exif": exif_tags(Orientation=orientation)}  # over the first page's
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression=compression,
                  exif=exif_tags(Orientation=orientations[0]))


# Each page's orientation, applied to that page alone, decoded by Pillow (raw) and by libtiff.
@pytest.mark.parametrize(("orientations", "compression"), [
    ([6, 1], "raw"), ([3, 8], "raw"), ([1, 6], "raw"), ([5, 7, 2], "raw"),
    ([9, 6], "raw"),  # 9 is no orientation, and is ignored (libtiff's writer refuses it)
    ([6, 1], "tiff_lzw"), ([3, 8], "tiff_lzw"),
], ids=str)
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_each_tiff_page_is_turned_by_its_own_orientation(orientations, compression, direction):
    source = _tiff_pages(orientations, compression)
    pages = Image.open(io.BytesIO(source))
    stored = []
    for index in range(pages.n_frames):
        pages.seek(index)
        stored.append(pages.tag_v2[ExifTags.Base.Orientation])
    assert stored == orientations  # each page's own directory has its own tag

    result = imaging.flip(source, direction)

    flipped = Image.open(io.BytesIO(result.data))
    assert result.frames == flipped.n_frames == len(orientations)
    for index in range(len(orientations)):
        pages.seek(index)
        flipped.seek(index)
        expected = ImageOps.exif_transpose(pages).transpose(imaging.DIRECTIONS[direction])
        assert (flipped.size, flipped.getbbox()) == (expected.size, expected.getbbox()), f"page {index + 1}"
        assert ExifTags.Base.Orientation not in flipped.tag_v2
    pages.seek(0)
    assert (result.width, result.height) == ImageOps.exif_transpose(pages).size


def _tiff_page_metadata(data: bytes) -> list[tuple]:
    """Each page's Software, ImageDescription, dpi, ICC profile and EXIF directory, from its own
    directory (Pillow reports 1x1 dpi for a page without a resolution, and keeps an earlier
    page's profile in info)."""
    pages, found = Image.open(io.BytesIO(data)), []
    for index in range(pages.n_frames):
        pages.seek(index)
        exif = pages.getexif()
        dpi = pages.info["dpi"] if tiff.X_RESOLUTION in pages.tag_v2 else None
        found.append((exif.get(ExifTags.Base.Software), exif.get(ExifTags.Base.ImageDescription), dpi,
                      pages.tag_v2.get(tiff.ICC_PROFILE), dict(exif.get_ifd(ExifTags.IFD.Exif))))
    return found


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw"])
def test_each_tiff_page_keeps_its_own_tags_resolution_and_profile(compression):
    # The writer gives a later page the first page's metadata unless it is told that page's own.
    first, second, third = cornered((40, 30)), cornered((40, 30)), cornered((20, 10))
    second.encoderinfo = {"exif": exif_tags(Software="second", ImageDescription="page two"), "dpi": (300, 300),
                          "icc_profile": SRGB}
    third.encoderinfo = {"exif": b"", "dpi": None}
    source = encode(first, "TIFF", save_all=True, append_images=[second, third], exif=exif_tags(Software="first"),
                    dpi=(72, 72), compression=compression)
    expected = [("first", None, (72.0, 72.0), None, {}), ("second", "page two", (300.0, 300.0), SRGB, {}),
                (None, None, None, None, {})]
    assert _tiff_page_metadata(source) == expected  # as the source has them

    result = imaging.flip(source)

    assert _tiff_page_metadata(result.data) == expected
    assert result.dropped == ()


def test_a_later_tiff_pages_exif_directory_is_named_dropped_and_the_first_pages_kept():
    # Pillow's writer moves a later page's pixel offsets, not its pointer to an EXIF directory.
    # (Two pages of one layout: the second's pointer, left as it was, happens to be right.)
    exif = Image.Exif()
    exif[ExifTags.Base.Software] = "both"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:01:02 03:04:05"
    source = encode(cornered((40, 30)), "TIFF", save_all=True, append_images=[cornered((40, 30))],
                    exif=exif.tobytes())
    directory = {ExifTags.Base.DateTimeOriginal: "2024:01:02 03:04:05"}
    assert [page[-1] for page in _tiff_page_metadata(source)] == [directory, directory]

    result = imaging.flip(source)

    assert _tiff_page_metadata(result.data) == [("both", None, None, None, directory), ("both", None, None, None, {})]
    assert result.dropped == ("exif",)


@pytest.mark.parametrize("page", [0, 1])
def test_an_lzma_tiff_page_counts_its_pixels_for_the_time_its_encoder_takes(page):
    # libtiff's xz encoder took 5.5 s on 50 MP, in one call the deadline cannot stop.
    pages = [Image.new("L", (16, 16)), Image.new("L", (16, 16))]
    pages[page] = Image.new("L", (2_600, 2_500))
    pages[page].encoderinfo = {"compression": "lzma"}
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    compression="lzma" if page == 0 else "tiff_deflate")
    with pytest.raises(imaging.TooLarge, match="limit is 6,250,000 for LZMA-compressed TIFF pictures"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    pages[page] = Image.new("L", (1_000, 1_000))
    pages[page].encoderinfo = {"compression": "lzma"}
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    compression="lzma" if page == 0 else "tiff_deflate")
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000)).frames == 2

