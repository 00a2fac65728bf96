"""A TIFF's directories read without decoding: the most values one tag holds, and their entries."""

import pytest

from service import tiff
from tests.pictures import encode, photo, strips_tiff, tiff_of_entries


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


@pytest.mark.parametrize("data", [b"", b"II*\0", b"II*\0\xff\xff\xff\xff" + b"\0" * 8, b"MM\0+\0\x08\0\0" + b"\xff" * 8,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_what_is_not_a_readable_tiff_has_no_values_and_no_entries(data):
    assert tiff.counts(data, directories=3) == (0, 0)
