import io
from dataclasses import replace

import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from service import imaging
from tests.pictures import (
    animation,
    decode,
    encode,
    gif_declaring,
    photo,
    picture,
    png_declaring,
    psnr,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM
ACROSS = Image.Transpose.FLIP_LEFT_RIGHT

# (format, mode, save params): every lossless format with every mode it can hold.
LOSSLESS = [
    *[("PNG", mode, {}) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")],
    *[("TIFF", mode, {}) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK")],
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGB", {"compression": "tiff_adobe_deflate"}),
    *[("BMP", mode, {}) for mode in ("1", "L", "P", "RGB")],
    *[("GIF", mode, {}) for mode in ("L", "P")],
    *[("WEBP", mode, {"lossless": True, "exact": True}) for mode in ("RGB", "RGBA")],
]


@pytest.mark.parametrize(("fmt", "mode", "params"), LOSSLESS, ids=lambda v: str(v))
@pytest.mark.parametrize(("direction", "method"), [("vertical", DOWN), ("horizontal", ACROSS)])
def test_lossless_flip_is_exact(fmt, mode, params, direction, method):
    source = encode(picture(mode), fmt, **params)
    original = decode(source)

    result = imaging.flip(source, direction)
    flipped = decode(result.data)

    assert result.format == fmt == flipped.format
    assert result.media_type == imaging.MEDIA_TYPES[fmt]
    assert flipped.mode == original.mode
    assert flipped.tobytes() == original.transpose(method).tobytes()
    assert flipped.getpalette() == original.transpose(method).getpalette()
    assert flipped.info.get("transparency") == original.info.get("transparency")
    assert decode(imaging.flip(result.data, direction).data).tobytes() == original.tobytes()


def test_tiff_keeps_its_compression():
    source = encode(picture("RGB"), "TIFF", compression="tiff_lzw")
    assert decode(imaging.flip(source).data).info["compression"] == "tiff_lzw"


def test_bilevel_gif_keeps_its_colours():
    # GIF has no bilevel mode: Pillow reads it as L and writes it as P, same colours.
    original = decode(encode(picture("1"), "GIF"))
    flipped = decode(imaging.flip(encode(picture("1"), "GIF")).data)
    assert flipped.convert("RGB").tobytes() == original.convert("RGB").transpose(DOWN).tobytes()


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("L", {"quality": 85}),
        ("RGB", {"quality": 85, "subsampling": 0}),
        ("RGB", {"quality": 85, "subsampling": 1}),
        ("RGB", {"quality": 75, "subsampling": 2}),
        ("RGB", {"quality": 95, "progressive": True}),
        ("CMYK", {"quality": 85}),
    ],
)
def test_jpeg_keeps_tables_subsampling_and_quality(mode, params):
    source = encode(photo((333, 250), mode), "JPEG", **params)
    original = decode(source)

    result = imaging.flip(source)
    flipped = decode(result.data)
    twice = decode(imaging.flip(result.data).data)

    assert flipped.mode == original.mode
    assert flipped.quantization == original.quantization
    assert JpegImagePlugin.get_sampling(flipped) == JpegImagePlugin.get_sampling(original)
    assert bool(flipped.info.get("progressive")) == bool(params.get("progressive"))
    assert psnr(flipped, original.transpose(DOWN)) > 40
    assert psnr(twice, original) > 40
    # Same tables, so the size barely moves; a fixed quality would change it a lot.
    assert abs(len(result.data) - len(source)) < 0.1 * len(source)


def test_exif_orientation_is_applied_then_dropped():
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = 6  # the camera was turned: viewers rotate 90 degrees clockwise
    exif[0x010F] = "flipfleet camera"  # Make: other tags must survive
    upright = photo((320, 240))
    source = encode(upright, "JPEG", quality=95, exif=exif.tobytes())

    flipped = decode(imaging.flip(source).data)

    assert flipped.size == (240, 320)
    assert imaging.ORIENTATION not in flipped.getexif()
    assert flipped.getexif()[0x010F] == "flipfleet camera"
    assert psnr(flipped, upright.transpose(Image.Transpose.ROTATE_270).transpose(DOWN)) > 40


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_icc_profile_is_kept(fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(photo((64, 48)), fmt, icc_profile=icc)
    assert decode(imaging.flip(source).data).info["icc_profile"] == icc


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_flips_every_frame_and_keeps_timing(fmt, params):
    source, durations = animation(fmt, frames=4, **params)

    result = imaging.flip(source)

    assert result.frames == 4
    original, flipped = Image.open(io.BytesIO(source)), Image.open(io.BytesIO(result.data))
    assert flipped.n_frames == 4
    assert flipped.info["loop"] == 3
    for index, duration in enumerate(durations):
        original.seek(index)
        flipped.seek(index)
        flipped.load()
        assert flipped.info["duration"] == duration
        assert flipped.convert("RGBA").tobytes() == original.convert("RGBA").transpose(DOWN).tobytes()


def test_lossy_webp_stays_lossy_and_close():
    source = encode(photo(), "WEBP", quality=80)
    result = imaging.flip(source)
    assert b"VP8 " in result.data[:64]
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 35


def test_webp_lossless_detection():
    assert imaging._webp_is_lossless(encode(picture("RGB"), "WEBP", lossless=True))
    assert not imaging._webp_is_lossless(encode(picture("RGB"), "WEBP", quality=80))
    assert imaging._webp_is_lossless(animation("WEBP", lossless=True)[0])
    assert not imaging._webp_is_lossless(animation("WEBP", quality=80)[0])


def test_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        imaging.flip(encode(picture("L"), "PNG"), "diagonal")


def _truncated(fmt, fraction):
    data = encode(photo((200, 150)), fmt)
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text and not a picture",
        bytes(range(256)) * 40,
        *[_truncated(fmt, f) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP") for f in (0.1, 0.6)],
    ],
    ids=lambda d: f"{len(d)}B:{d[:4]!r}",
)
def test_damaged_or_foreign_data_is_not_an_image(data):
    with pytest.raises(imaging.NotAnImage):
        imaging.flip(data)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_other_real_formats_are_unsupported(fmt):
    with pytest.raises(imaging.UnsupportedFormat, match=fmt):
        imaging.flip(encode(picture("RGB"), fmt))


@pytest.mark.parametrize(
    "data",
    [png_declaring(8_000, 8_000), png_declaring(100_000, 100_000), gif_declaring(65_535, 65_535)],
    ids=["png-64MP", "png-10GP-pillow-bomb", "gif-4GP"],
)
def test_pixel_limit_is_checked_from_the_header(data):
    with pytest.raises(imaging.TooLarge, match="pixels"):
        imaging.flip(data, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))


def test_frame_limit():
    source, _ = animation("GIF", frames=6)
    with pytest.raises(imaging.TooLarge, match="more than 5 frames"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=5))
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=6)).frames == 6


def test_total_pixel_limit_over_frames():
    source, _ = animation("GIF", frames=6, size=(100, 100))
    with pytest.raises(imaging.TooLarge, match="add up"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_total_pixels=50_000))


def test_mpo_from_a_phone_is_written_as_jpeg():
    first, second = photo((120, 90)), photo((60, 45))
    source = encode(first, "MPO", save_all=True, append_images=[second])
    result = imaging.flip(source)
    assert (result.format, result.frames) == ("JPEG", 1)
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def test_a_bug_of_ours_is_not_reported_as_damaged_data(monkeypatch):
    def broken(im, data):
        raise KeyError("a bug, not the picture's fault")

    monkeypatch.setitem(imaging._FORMAT_PARAMS, "PNG", broken)
    with pytest.raises(KeyError):
        imaging.flip(encode(picture("RGB"), "PNG"))


def test_bad_parameters_of_ours_reach_the_encoder_as_a_bug_not_as_damaged_data(monkeypatch):
    # Our JPEG parameters, made wrong: Pillow's encoder refuses them with a ValueError or TypeError.
    monkeypatch.setitem(imaging._FORMAT_PARAMS, "JPEG", lambda im, data: {"qtables": "not tables"})
    with pytest.raises((ValueError, TypeError)):
        imaging.flip(encode(photo((64, 48)), "JPEG"))
