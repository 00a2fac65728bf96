"""BMP (service/formats/bmp.py): run-length pictures counted for their time."""

from dataclasses import replace

import pytest
from PIL import Image

from service import imaging
from tests.pictures import (
    bmp_rle8,
    decode,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


def test_a_run_length_bmp_counts_its_pixels_for_the_time_pillow_takes_on_them():
    # Pillow decodes RLE in Python: a 124-byte BMP of 49 million pixels took 7 s.
    with pytest.raises(imaging.TooLarge, match="limit is 6,250,000 for run-length BMP pictures"):
        imaging.flip(bmp_rle8((2_600, 2_500), run=255), limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    source = bmp_rle8((400, 300), run=16)
    flipped = imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    assert decode(flipped.data).tobytes() == decode(source).transpose(DOWN).tobytes()

