"""A TIFF's directories read without decoding: the most values one tag holds, and their entries."""

import struct

import pytest
from PIL import Image

from service import tiff
from tests.pictures import encode, exif_of_entries, photo, strips_tiff, tiff_of_entries


@pytest.mark.parametrize("kwargs", [{}, {"compression": "tiff_lzw"}, {"big_tiff": True}],
                         ids=["plain", "lzw", "bigtiff"])
def test_what_pillow_writes_has_few_values_a_tag_and_few_tags(kwargs):
    values, entries = tiff.counts(encode(photo((300, 200)), "TIFF", **kwargs), directories=5)
    assert 1 <= values <= 3
    assert 8 <= entries <= 20


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_strips_of_a_crafted_tiff_are_counted(order):
    assert tiff.counts(strips_tiff(5000, order), directories=1)[0] == 5000


def test_later_pages_are_read_up_to_the_bound():
    pages = encode(photo((30, 20)), "TIFF", save_all=True, append_images=[photo((30, 20))] * 3)
    values, entries = tiff.counts(pages, directories=4)
    assert values == 3
    assert entries == 4 * tiff.counts(encode(photo((30, 20)), "TIFF"), directories=1)[1]
    assert tiff.counts(pages, directories=2)[1] == entries // 2


@pytest.mark.parametrize("pages", [1, 3])
def test_the_entries_of_every_page_are_counted(pages):
    assert tiff.counts(tiff_of_entries(pages, 1_000), directories=pages)[1] == 1_000


def test_counting_entries_stops_past_the_bound():
    assert tiff.counts(tiff_of_entries(2, 3 * tiff.MOST_ENTRIES), directories=2)[1] <= 2 * tiff.MOST_ENTRIES


def test_the_exif_directory_of_an_exif_is_counted():
    exif = exif_of_entries(10, in_exif_directory=5).removeprefix(b"Exif\0\0")  # an EXIF is a TIFF
    assert tiff.counts(exif, directories=1) == (1, 15)


def test_the_exif_directory_of_the_first_page_is_counted_and_a_later_pages_not():
    # Both pages get the EXIF (Pillow writes a page with the first's settings): three entries in
    # each page's own directory (two tags and the pointer), and 40 in each EXIF directory.
    page = Image.new("L", (4, 4))
    own = tiff.counts(encode(page, "TIFF"), directories=1)[1]
    pages = encode(page, "TIFF", save_all=True, append_images=[page.copy()],
                   exif=exif_of_entries(3, in_exif_directory=40))
    assert tiff.counts(pages, directories=2)[1] == 2 * (own + 3) + 40


@pytest.mark.parametrize(("kind", "count", "counted"), [(3, 100, 100), (3, 10**8, 1), (99, 100, 1)],
                         ids=["held", "more-than-the-data-holds", "unknown-type"])
def test_only_the_values_pillow_reads_are_counted(kind, count, counted):
    # Pillow skips a tag whose values the data cannot hold, or of a type it does not know.
    exif = bytearray(exif_of_entries(3).removeprefix(b"Exif\0\0") + bytes(200))
    struct.pack_into("<HI", exif, 8 + 2 + 2, kind, count)  # the first entry's type and count
    assert tiff.counts(bytes(exif), directories=1)[0] == counted


@pytest.mark.parametrize("data", [b"", b"II*\0", b"II*\0\xff\xff\xff\xff" + b"\0" * 8, b"MM\0+\0\x08\0\0" + b"\xff" * 8,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_what_is_not_a_readable_tiff_has_no_values_and_no_entries(data):
    assert tiff.counts(data, directories=3) == (0, 0)
