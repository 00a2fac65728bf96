"""A TIFF's directories read without decoding: the most values one tag holds."""

import pytest

from service import tiff
from tests.pictures import encode, photo, strips_tiff


@pytest.mark.parametrize("kwargs", [{}, {"compression": "tiff_lzw"}, {"big_tiff": True}],
                         ids=["plain", "lzw", "bigtiff"])
def test_what_pillow_writes_has_few_values_a_tag(kwargs):
    assert 1 <= tiff.largest_tag(encode(photo((300, 200)), "TIFF", **kwargs), directories=5) <= 3


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_strips_of_a_crafted_tiff_are_counted(order):
    assert tiff.largest_tag(strips_tiff(5000, order), directories=1) == 5000


def test_later_pages_are_read_up_to_the_bound():
    pages = encode(photo((30, 20)), "TIFF", save_all=True, append_images=[photo((30, 20))] * 3)
    assert tiff.largest_tag(pages, directories=4) == 3


@pytest.mark.parametrize("data", [b"", b"II*\0", b"II*\0\xff\xff\xff\xff" + b"\0" * 8, b"MM\0+\0\x08\0\0" + b"\xff" * 8,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_what_is_not_a_readable_tiff_has_no_values(data):
    assert tiff.largest_tag(data, directories=3) == 0
