"""Every format that carries transparency keeps it through a flip: the answer has the source's
alpha, flipped, or names what it lost in X-Flipfleet-Dropped."""

import pytest
from PIL import Image, ImageChops

from service import imaging
from tests.pictures import animation, bmp_with_alpha, decode, encode, photo

SIZE = (64, 48)


def translucent(mode: str = "RGBA") -> Image.Image:
    """A photo whose alpha runs from clear at the left to opaque at the right, a clear corner."""
    im = photo(SIZE).convert("RGBA")
    alpha = Image.linear_gradient("L").rotate(90).resize(SIZE)
    alpha.putpixel((0, 0), 0)
    im.putalpha(alpha)
    return im.convert(mode)


SOURCES = {
    "PNG RGBA": lambda: encode(translucent(), "PNG"),
    "PNG LA": lambda: encode(translucent("LA"), "PNG"),
    "PNG palette": lambda: encode(translucent().convert("P"), "PNG", transparency=0),
    "GIF": lambda: encode(translucent().convert("P"), "GIF", transparency=0),
    "GIF animation": lambda: animation("GIF", transparency=0)[0],
    "WebP lossless": lambda: encode(translucent(), "WEBP", lossless=True),
    "WebP lossy": lambda: encode(translucent(), "WEBP", quality=90),
    "TIFF": lambda: encode(translucent(), "TIFF"),
    "TIFF LZW grey": lambda: encode(translucent("LA"), "TIFF", compression="tiff_lzw"),
    "BMP V5": lambda: bmp_with_alpha(translucent()),
    "BMP V4": lambda: bmp_with_alpha(translucent(), header=108),
    "HEIC": lambda: encode(translucent(), "HEIF", quality=90),
    "AVIF": lambda: encode(translucent(), "AVIF", quality=90),
}


def alpha_of(im: Image.Image) -> Image.Image:
    """The picture's transparency as a mask: its alpha band, or its colour key's pixels."""
    if "transparency" in im.info or im.mode in ("P", "PA"):
        return im.convert("RGBA").getchannel("A")
    return im.getchannel("A")


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_source_with_alpha_keeps_it_flipped(name):
    source = SOURCES[name]()
    before = decode(source)
    assert before.has_transparency_data, f"the {name} source has no alpha to keep"
    flipped = imaging.flip(source, "vertical")
    after = decode(flipped.data)
    assert after.has_transparency_data or "alpha" in flipped.dropped, (after.mode, after.info, flipped.dropped)
    expected = alpha_of(before).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    # Lossy codecs may round alpha a little; a lost or unflipped alpha differs by far more.
    assert ImageChops.difference(alpha_of(after), expected).getextrema()[1] <= 16
