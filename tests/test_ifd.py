"""TIFF directories (service/formats/ifd.py), read without decoding: the most numbers one tag holds, their entries, and
all their numbers."""

import io
import struct

import pytest
from PIL import Image, TiffImagePlugin

from service import imaging
from service.formats import ifd
from tests.pictures import encode, exif_of_entries, photo, strips_tiff, tiff_of_entries


@pytest.mark.parametrize("kwargs", [{}, {"compression": "tiff_lzw"}, {"big_tiff": True}],
                         ids=["plain", "lzw", "bigtiff"])
def test_what_pillow_writes_has_few_values_a_tag_and_few_tags(kwargs):
    values, entries, _ = ifd.counts(encode(photo((300, 200)), "TIFF", **kwargs), directories=5)
    assert 1 <= values <= 3
    assert 8 <= entries <= 20


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_strips_of_a_crafted_tiff_are_counted(order):
    assert ifd.counts(strips_tiff(5000, order), directories=1).largest_tag == 5000


def test_later_pages_are_read_up_to_the_bound():
    pages = encode(photo((30, 20)), "TIFF", save_all=True, append_images=[photo((30, 20))] * 3)
    values, entries, _ = ifd.counts(pages, directories=4)
    assert values == 3
    assert entries == 4 * ifd.counts(encode(photo((30, 20)), "TIFF"), directories=1).entries
    assert ifd.counts(pages, directories=2).entries == entries // 2


@pytest.mark.parametrize("pages", [1, 3])
def test_the_entries_of_every_page_are_counted(pages):
    assert ifd.counts(tiff_of_entries(pages, 1_000), directories=pages).entries == 1_000


def test_counting_entries_stops_past_the_bound():
    assert ifd.counts(tiff_of_entries(2, 3 * ifd.MOST_ENTRIES), directories=2).entries <= 2 * ifd.MOST_ENTRIES


def test_the_exif_directory_of_an_exif_is_counted():
    exif = exif_of_entries(10, in_exif_directory=5).removeprefix(b"Exif\0\0")  # an EXIF is a TIFF
    assert ifd.counts(exif, directories=1).entries == 15


def test_the_exif_directory_of_the_first_page_is_counted_and_a_later_pages_not():
    # Both pages get the EXIF (Pillow writes a page with the first's settings): three entries in
    # each page's own directory (two tags and the pointer), and 40 in each EXIF directory.
    page = Image.new("L", (4, 4))
    own = ifd.counts(encode(page, "TIFF"), directories=1).entries
    pages = encode(page, "TIFF", save_all=True, append_images=[page.copy()],
                   exif=exif_of_entries(3, in_exif_directory=40))
    assert ifd.counts(pages, directories=2).entries == 2 * (own + 3) + 40


@pytest.mark.parametrize(("kind", "count", "counted"), [
    (3, 100, 100), (3, 10**8, 0), (99, 100, 0), (7, 150, 0), (2, 150, 0), (1, 150, 0),
], ids=["shorts", "more-than-the-data-holds", "unknown-type", "undefined", "ascii", "bytes"])
def test_only_the_values_pillow_reads_one_by_one_are_counted(kind, count, counted):
    # Pillow skips a tag whose values the data cannot hold, or of a type it does not know, and
    # reads BYTE, ASCII and UNDEFINED values as one bytes or str.
    exif = bytearray(exif_of_entries(3).removeprefix(b"Exif\0\0") + bytes(400))
    struct.pack_into("<HI", exif, 8 + 2 + 2, kind, count)  # the first entry's type and count
    assert ifd.counts(bytes(exif), directories=1).largest_tag == counted


def _pointing(value_type: int, field: bytes, pointers: int = 1, big: bool = False) -> bytes:
    """A little-endian TIFF whose first directory has `pointers` EXIF-directory entries of
    `value_type` holding `field`, and a directory of 100 entries at offset 4096 (a LONG8 value of a
    classic TIFF at 2048)."""
    header = b"II+\0\x08\0\0\0" + struct.pack("<Q", 16) if big else b"II*\0" + struct.pack("<I", 8)
    entry, count = ("<HHQ8s", "<Q") if big else ("<HHI4s", "<H")
    table = b"".join(struct.pack(entry, tag, value_type, 1, field) for tag in (34665, 34853)[:pointers])
    data = bytearray(header + struct.pack(count, pointers) + table + bytes(8))
    data += bytes(4096 - len(data))
    struct.pack_into("<Q", data, 2048, 4096)
    directory = b"".join(struct.pack(entry, 1000 + i, 1, 1, bytes(struct.calcsize(entry) - 8)) for i in range(100))
    return bytes(data + struct.pack(count, 100) + directory + bytes(8))


@pytest.mark.parametrize(("value_type", "field", "big"), [
    (4, struct.pack("<I", 4096), False),
    (13, struct.pack("<I", 4096), False),  # IFD
    (3, struct.pack("<HH", 4096, 0xFFFF), False),  # a SHORT is its first two bytes
    (16, struct.pack("<I", 2048), False),  # a LONG8 does not fit a classic field: stored apart
    (4, struct.pack("<IHH", 4096, 1, 1), True),  # a LONG in a BigTIFF's field, then padding
    (16, struct.pack("<Q", 4096), True),
], ids=["long", "ifd", "short", "classic-long8", "bigtiff-long", "bigtiff-long8"])
def test_a_pointer_is_read_by_its_type_as_pillow_reads_it(value_type, field, big):
    data = _pointing(value_type, field, big=big)
    assert ifd.counts(data, directories=1).entries == 1 + 100
    if not big:  # Pillow reads an EXIF of a classic TIFF's shape
        exif = Image.Exif()
        exif.load(data)
        assert len(exif.get_ifd(34665)) == 100


def test_a_directory_pointed_to_twice_is_counted_twice():
    # The EXIF and GPS pointers at one directory: Pillow reads it for each.
    assert ifd.counts(_pointing(4, struct.pack("<I", 4096), pointers=2), directories=1).entries == 2 + 200


@pytest.mark.parametrize("data", [b"", b"II*\0", b"II*\0\xff\xff\xff\xff" + b"\0" * 8, b"MM\0+\0\x08\0\0" + b"\xff" * 8,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_what_is_not_a_readable_tiff_holds_nothing(data):
    assert ifd.counts(data, directories=3) == (0, 0, 0)


@pytest.mark.parametrize(("value_type", "weight"), [(3, 1), (4, 1), (11, 1), (12, 2), (5, 10), (10, 10), (7, 0)],
                         ids=["short", "long", "float", "double", "rational", "srational", "undefined"])
def test_the_numbers_of_all_tags_are_counted_by_their_weight(value_type, weight):
    # Three tags, each of 100 values at one place in the data (Pillow reads each).
    exif = bytearray(exif_of_entries(3).removeprefix(b"Exif\0\0") + bytes(800))
    for index in range(3):
        struct.pack_into("<HII", exif, 8 + 2 + 12 * index + 2, value_type, 100, 60)
    assert ifd.counts(bytes(exif), directories=1).numbers == 3 * 100 * weight


def tiff_with_page_numbers(mode: str, compression: str, numbers: list[tuple[int, int]], **kwargs) -> bytes:
    """A TIFF of a page per entry of `numbers`, each with that PageNumber (the writer's fixed)."""
    out = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(out) as pages:
        for number in numbers:
            Image.new(mode, (64, 32)).save(pages, "TIFF", compression=compression, tiffinfo={ifd.PAGE_NUMBER: number},
                                           **kwargs)
            pages.newFrame()
    return ifd.with_page_numbers(out.getvalue(), numbers)


def page_numbers(data: bytes) -> list:
    im = Image.open(io.BytesIO(data))
    found = []
    for page in range(im.n_frames):
        im.seek(page)
        found.append(im.tag_v2.get(ifd.PAGE_NUMBER))
    return found


@pytest.mark.parametrize(("mode", "compression", "numbers"), [
    ("1", "group4", [(0, 1)]),
    ("RGB", "tiff_lzw", [(0, 1)]),
    ("RGB", "tiff_adobe_deflate", [(0, 3), (1, 3), (2, 3)]),
    ("L", "raw", [(4, 9)]),
], ids=["ccitt", "lzw", "deflate-pages", "raw"])
def test_a_flipped_tiff_keeps_its_page_numbers(mode, compression, numbers):
    # Pillow's libtiff writer writes (2, 16 bits of an address) for any PageNumber it is given.
    source = tiff_with_page_numbers(mode, compression, numbers)
    assert page_numbers(source) == numbers
    assert page_numbers(imaging.flip(source).data) == numbers


@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
def test_page_numbers_are_written_into_each_directory_in_place(big):
    written = encode(photo((30, 20)), "TIFF", compression="tiff_lzw", big_tiff=big, tiffinfo={ifd.PAGE_NUMBER: (0, 1)})
    fixed = ifd.with_page_numbers(written, [(7, 8)])
    assert len(fixed) == len(written) and page_numbers(fixed) == [(7, 8)]
    assert ifd.with_page_numbers(fixed, [None]) == fixed
    assert ifd.with_page_numbers(b"not a tiff", [(0, 1)]) == b"not a tiff"
