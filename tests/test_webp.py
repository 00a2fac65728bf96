"""WebP (service/formats/webp.py): lossy stays lossy, lossless lossless; chunks bounded; memory counted."""

from dataclasses import replace

import pytest
from PIL import Image

from service import imaging
from service.formats import webp
from tests.flips import counted
from tests.pictures import (
    animation,
    decode,
    encode,
    photo,
    picture,
    psnr,
    webp_padded,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


def test_lossy_webp_stays_lossy_and_close():
    source = encode(photo(), "WEBP", quality=80)
    result = imaging.flip(source)
    assert b"VP8 " in result.data[:64]
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 35


def test_webp_lossless_detection():
    assert webp.is_lossless(encode(picture("RGB"), "WEBP", lossless=True))
    assert not webp.is_lossless(encode(picture("RGB"), "WEBP", quality=80))
    assert webp.is_lossless(animation("WEBP", lossless=True)[0])
    assert not webp.is_lossless(animation("WEBP", quality=80)[0])


def test_a_webp_of_more_chunks_than_any_picture_has_is_refused_before_its_pixels():
    # Each empty chunk is 8 bytes: 25 MB of them would cost seconds to walk.
    with pytest.raises(imaging.TooCostly, match="chunks"):
        imaging.flip(webp_padded(webp.MOST_CHUNKS + 1))
    flipped = imaging.flip(webp_padded(webp.MOST_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


@pytest.mark.parametrize(("lossless", "weight"), [(False, 24 / 8), (True, 46 / 8)], ids=["lossy", "lossless"])
def test_webp_pixels_count_for_the_memory_their_flips_take(lossless, weight):
    source = encode(photo((64, 48)), "WEBP", lossless=lossless)
    within = replace(imaging.NO_LIMITS, max_pixels=counted((64, 48), weight))
    assert imaging.flip(source, limits=within).format == "WEBP"
    with pytest.raises(imaging.TooLarge, match="times the memory a pixel"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=int(64 * 48 * weight) - 1))

