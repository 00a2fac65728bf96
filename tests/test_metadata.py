"""EXIF, XMP and ICC (service/formats/metadata.py), and what a flip drops when a writer refuses it."""

import struct

import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

from service import imaging
from service.formats import ifd
from tests.flips import (
    SRGB,
    exif_pixel_dimensions,
    exif_tags,
    flips_exactly,
    jpeg_with_unwritable_exif,
    with_pixel_dimensions,
)
from tests.pictures import (
    decode,
    encode,
    exif_of_entries,
    photo,
    picture,
    psnr,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


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


def test_exif_that_cannot_be_written_again_is_dropped():
    # The picture is fine: flipped without its EXIF, not a 400.
    source = jpeg_with_unwritable_exif()

    result = imaging.flip(source, lossless=False)

    assert result.dropped == ("exif",)
    assert decode(result.data).info["icc_profile"] == SRGB
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def exif_with_a_number_for_text(orientation: int | None) -> bytes:
    """An EXIF directory whose Make (ASCII) is stored as a FLOAT: Pillow reads it, and its writers
    fail on it with an AttributeError."""
    entries = [struct.pack("<HHIf", ExifTags.Base.Make, 11, 1, 1.5)]
    if orientation:
        entries.insert(0, struct.pack("<HHIHH", ExifTags.Base.Orientation, 3, 1, orientation, 0))
    return b"II*\0\x08\0\0\0" + struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"


@pytest.mark.parametrize("orientation", [None, 6])
@pytest.mark.parametrize(("fmt", "prefix"), [("PNG", b""), ("JPEG", b"Exif\0\0"), ("WEBP", b""), ("HEIF", b"")])
@pytest.mark.parametrize("lossless", [True, False])
def test_exif_with_a_number_for_text_is_dropped_not_a_500(fmt, prefix, orientation, lossless):
    source = encode(photo((64, 48)), fmt, exif=prefix + exif_with_a_number_for_text(orientation))

    result = imaging.flip(source, lossless=lossless)

    assert "exif" in result.dropped or result.path == "lossless"
    assert (result.width, result.height) == ((48, 64) if orientation else (64, 48))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize(("orientation", "size"), [(6, (64, 128)), (3, (128, 64))], ids=["turned", "upside-down"])
def test_the_exif_width_and_height_written_back_are_the_flipped_pictures(fmt, orientation, size):
    result = imaging.flip(with_pixel_dimensions(fmt, orientation))
    assert exif_pixel_dimensions(result.data) == decode(result.data).size == size


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_ordinary_metadata_is_all_kept(fmt):
    # Dropping is for metadata the writer refuses; a bug that made ordinary metadata fail would
    # hide behind it, so: nothing is dropped from ordinary pictures.
    source = encode(photo((64, 48)), fmt, exif=exif_tags(Make="flipfleet camera", Software="flipfleet"),
                    icc_profile=SRGB, dpi=(300, 300))
    result = imaging.flip(source)
    assert result.dropped == ()
    assert decode(result.data).getexif()[ExifTags.Base.Make] == "flipfleet camera"


def _png_writer_refusing(monkeypatch, refused):
    """Pillow's PNG writer, refusing (with struct.error, as the TIFF writer does) any picture
    whose parameters carry one of `refused`."""

    def save(im, fp, filename):
        if any(im.encoderinfo.get(key) is not None for key in refused):
            raise struct.error("required argument is not an integer")
        return PngImagePlugin._save(im, fp, filename)

    monkeypatch.setitem(Image.SAVE, "PNG", save)


def _png_with_metadata():
    return encode(picture("P"), "PNG", exif=exif_tags(Software="flipfleet"), icc_profile=SRGB, dpi=(300, 300),
                  transparency=3)


def test_only_the_metadata_the_writer_refuses_is_dropped(monkeypatch):
    source = _png_with_metadata()
    _png_writer_refusing(monkeypatch, {"icc_profile"})
    result, flipped = flips_exactly(source)
    assert result.dropped == ("icc_profile",)
    assert "icc_profile" not in flipped.info  # not even from the frame's own info, where PNG looks
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"
    assert flipped.info["transparency"] == 3 and flipped.info["dpi"] == pytest.approx((300, 300), abs=0.1)


def test_two_refused_items_are_dropped_in_the_documented_order(monkeypatch):
    source = _png_with_metadata()
    _png_writer_refusing(monkeypatch, {"exif", "dpi"})
    result, flipped = flips_exactly(source)
    assert result.dropped == ("exif", "dpi")
    assert list(imaging.SOURCE_METADATA)[:3] == ["exif", "tiff_tags", "dpi"]
    assert flipped.info["icc_profile"] == SRGB and flipped.info["transparency"] == 3


def test_a_writer_failure_without_any_metadata_is_still_a_bug(monkeypatch):
    # Our parameters made wrong, on a picture with metadata: dropping it all does not help, so
    # the encoder's ValueError or TypeError goes on to the 500, as before.
    monkeypatch.setattr(imaging.FORMATS["JPEG"], "save_params", lambda *args: {"qtables": "not tables"})
    source = encode(photo((64, 48)), "JPEG", exif=exif_tags(Software="flipfleet"), icc_profile=SRGB, dpi=(72, 72))
    with pytest.raises((ValueError, TypeError)):
        imaging.flip(source, lossless=False)


def test_an_encoder_failure_without_any_metadata_is_still_damaged_data(monkeypatch):
    source = _png_with_metadata()
    tries = []

    def failing(im, fp, filename):
        tries.append(sorted(key for key in im.encoderinfo if key in imaging.SOURCE_METADATA.values()))
        raise OSError("encoder error -2 when writing image file")

    monkeypatch.setitem(Image.SAVE, "PNG", failing)
    with pytest.raises(imaging.NotAnImage, match="cannot be written back"):
        imaging.flip(source)
    assert tries[0] == ["dpi", "exif", "icc_profile", "transparency"] and tries[-1] == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_an_exif_of_more_tags_than_the_bound_is_refused_before_pillow_reads_it(fmt):
    # Each costs Pillow a Python loop turn or more, read and written back: an EXIF has tens.
    most = ifd.MOST_ENTRIES
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(encode(picture("RGB"), fmt, exif=exif_of_entries(most + 1 - 100, in_exif_directory=100)))
    flipped = imaging.flip(encode(picture("RGB"), fmt, exif=exif_of_entries(most - 100, in_exif_directory=100)))
    assert len(decode(flipped.data).getexif()) == most - 100


@pytest.mark.parametrize(("fmt", "lossless"), [("PNG", True), ("WEBP", True), ("JPEG", False), ("HEIF", True)])
def test_an_exif_tag_pillow_lists_but_keeps_no_value_of_is_dropped_not_a_500(fmt, lossless):
    # Pillow keeps no value for a PhotometricInterpretation of two, and raises KeyError on it.
    exif = b"Exif\0\0II*\0\x08\0\0\0" + struct.pack("<HHHIHH", 1, 262, 3, 2, 2, 2) + bytes(4)
    result = imaging.flip(encode(picture("RGB"), fmt, exif=exif), lossless=lossless)
    assert result.dropped == ("exif",)

