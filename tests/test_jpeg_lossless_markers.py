"""What a lossless transform (service/formats/jpeg_lossless.py) does to a JPEG's markers: every
APPn and COM segment kept, the orientation taken out of the EXIF and XMP, the EXIF thumbnail
unlinked, a quarter turn's pixel dimensions swapped, an MPO's index and what follows the picture
dropped."""

import struct

import pytest
from PIL import ExifTags, Image, ImageCms

from service.formats import jpeg_lossless, metadata
from service.formats.jpeg_lossless import transform
from tests.flips import ALIGNED, app_segments, jpeg
from tests.pictures import decode, encode, photo

DOWN, ACROSS = Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.FLIP_LEFT_RIGHT

SHORT, LONG = 3, 4
WIDTH, HEIGHT = metadata.PIXEL_DIMENSIONS

# Every test here needs libturbojpeg (conftest.py).
pytestmark = pytest.mark.usefixtures("turbojpeg")


def exif(**tags) -> Image.Exif:
    result = Image.Exif()
    for name, value in tags.items():
        result[ExifTags.Base[name]] = value
    return result


def test_markers_survive_but_the_orientation():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = jpeg(
        "4:2:0", icc_profile=icc, exif=exif(Orientation=6, Make="Acme").tobytes(),
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>", comment=b"a comment", dpi=(300, 300),
    )

    result = transform(source, DOWN)

    flipped = decode(result)
    assert ExifTags.Base.Orientation not in flipped.getexif()
    assert flipped.getexif()[ExifTags.Base.Make] == "Acme"
    assert flipped.info["icc_profile"] == icc
    # Every APPn and COM segment but the EXIF, byte for byte, in the same order.
    def not_exif(data):
        return [seg for seg in app_segments(data) if not seg[4:].startswith(b"Exif")]
    assert not_exif(result) == not_exif(source)
    assert len(app_segments(result)) == len(app_segments(source))


@pytest.mark.parametrize("size", [ALIGNED, (250, 250)], ids=["aligned", "not aligned"])
def test_no_operation_leaves_the_coefficients_and_takes_out_the_orientation(size):
    plain = jpeg("4:2:0", size=size)
    oriented = jpeg("4:2:0", size=size, exif=exif(Orientation=3, Make="Acme").tobytes())
    assert transform(plain, None) == plain
    result = transform(oriented, None)
    assert dict(decode(result).getexif()) == {ExifTags.Base.Make: "Acme"}
    assert decode(result).tobytes() == decode(oriented).tobytes()


# Pillow takes the orientation from XMP when the EXIF has none; left there, a viewer reading XMP
# would turn the picture again.
@pytest.mark.parametrize("xmp", [
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>',
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"><tiff:Orientation>6</tiff:Orientation></rdf:Description>',
], ids=["attribute", "element"])
def test_the_xmp_orientation_is_taken_out_too(xmp):
    source = jpeg("4:2:0", xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + xmp + b"</x:xmpmeta>")
    assert decode(source).getexif()[ExifTags.Base.Orientation] == 6
    result = transform(source, DOWN)
    assert ExifTags.Base.Orientation not in decode(result).getexif()
    assert b"Orientation" not in decode(result).info["xmp"] and b"rdf:Description" in decode(result).info["xmp"]


def test_an_exif_without_orientation_is_kept_byte_for_byte():
    source = jpeg("4:2:0", exif=exif(Make="Acme", Model="Roadrunner").tobytes())
    assert app_segments(transform(source, DOWN)) == app_segments(source)


def exif_with_thumbnail(order: str) -> bytes:
    """EXIF of a Make tag in IFD0, and IFD1 holding a 32x16 JPEG thumbnail after it."""
    thumbnail = encode(photo((32, 16)), "JPEG")
    ifd1 = 8 + 2 + 12 + 4
    thumbnail_at = ifd1 + 2 + 3 * 12 + 4
    magic = b"II*\0" if order == "<" else b"MM\0*"
    tiff = (magic + struct.pack(order + "IH", 8, 1) + struct.pack(order + "HHI", 0x010F, 2, 3) + b"Mk\0\0"
            + struct.pack(order + "IH", ifd1, 3)
            + struct.pack(order + "HHIHH", 0x0103, 3, 1, 6, 0)  # Compression: JPEG
            + struct.pack(order + "HHII", 0x0201, 4, 1, thumbnail_at) + struct.pack(order + "HHII", 0x0202, 4, 1,
                                                                                      len(thumbnail))
            + b"\0\0\0\0" + thumbnail)
    return b"Exif\0\0" + tiff


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_transform_unlinks_the_exif_thumbnail_and_keeps_the_rest(order):
    # The thumbnail is not transformed: viewers that show it would show the picture unflipped.
    source = jpeg("4:2:0", exif=exif_with_thumbnail(order))
    assert decode(source).getexif().get_ifd(ExifTags.IFD.IFD1)

    kept = decode(transform(source, DOWN)).getexif()

    assert kept.get_ifd(ExifTags.IFD.IFD1) == {}
    assert kept[ExifTags.Base.Make] == "Mk"
    assert app_segments(jpeg_lossless.without_orientation(source)) == app_segments(source)


SHORT, LONG = 3, 4


WIDTH, HEIGHT = metadata.PIXEL_DIMENSIONS


def exif_with_dimensions(order: str, dimensions: dict[int, tuple[int, int]]) -> bytes:
    """EXIF of a Make tag and the Exif directory's pointer in IFD0, and that directory holding
    `dimensions`: tag -> (type, value)."""
    exif_directory = 8 + 2 + 2 * 12 + 4
    ifd0 = (struct.pack(order + "H", 2) + struct.pack(order + "HHI", 0x010F, 2, 3) + b"Mk\0\0"
            + struct.pack(order + "HHII", ExifTags.IFD.Exif, LONG, 1, exif_directory) + b"\0\0\0\0")
    entries = [struct.pack(order + "HHI", tag, kind, 1) + struct.pack(order + ("HH" if kind == SHORT else "I"),
                                                                       value, *([0] if kind == SHORT else []))
               for tag, (kind, value) in sorted(dimensions.items())]
    return (b"Exif\0\0" + (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8) + ifd0
            + struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\0\0\0\0")


def exif_segment(data: bytes) -> bytes:
    (segment,) = [seg for seg in app_segments(data) if seg[4:].startswith(b"Exif")]
    return segment


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize(("stored", "turned"), [
    ({WIDTH: (SHORT, 320), HEIGHT: (SHORT, 240)}, {WIDTH: (SHORT, 240), HEIGHT: (SHORT, 320)}),
    ({WIDTH: (LONG, 320), HEIGHT: (LONG, 240)}, {WIDTH: (LONG, 240), HEIGHT: (LONG, 320)}),
    ({WIDTH: (SHORT, 320), HEIGHT: (LONG, 240)}, {WIDTH: (LONG, 240), HEIGHT: (SHORT, 320)}),
    ({WIDTH: (LONG, 320)}, {HEIGHT: (LONG, 320)}),
], ids=["shorts", "longs", "each value its own type", "width alone"])
def test_a_quarter_turn_swaps_the_exif_width_and_height_and_keeps_the_rest(order, stored, turned):
    # Without an orientation tag the EXIF is not rewritten by Pillow: only these bytes change.
    source = jpeg("4:2:0", exif=exif_with_dimensions(order, stored))
    assert decode(source).getexif().get_ifd(ExifTags.IFD.Exif) == {tag: value for tag, (_, value) in stored.items()}

    for operation in (Image.Transpose.ROTATE_90, Image.Transpose.TRANSPOSE):
        result = transform(source, operation)
        assert decode(result).size == ALIGNED[::-1]
        assert exif_segment(result) == exif_segment(jpeg("4:2:0", exif=exif_with_dimensions(order, turned)))
    assert exif_segment(transform(source, DOWN)) == exif_segment(source)


def test_a_quarter_turn_with_an_orientation_tag_swaps_the_exif_width_and_height():
    tags = exif(Orientation=6, Make="Acme")
    tags.get_ifd(ExifTags.IFD.Exif).update({WIDTH: ALIGNED[0], HEIGHT: ALIGNED[1]})
    result = decode(transform(jpeg("4:2:0", exif=tags.tobytes()), Image.Transpose.ROTATE_270))
    directory = result.getexif().get_ifd(ExifTags.IFD.Exif)
    assert (directory[WIDTH], directory[HEIGHT]) == result.size == ALIGNED[::-1]


@pytest.mark.parametrize("operation", [DOWN, Image.Transpose.ROTATE_270], ids=["flip", "quarter turn"])
def test_the_orientation_is_taken_out_in_place_and_every_other_byte_of_the_exif_stays(operation):
    # A maker note holds offsets into the EXIF that no tool rewrites: the EXIF must not move.
    maker_note = b"Acme\0\x01" + bytes(range(200))
    tags = exif(Orientation=6, Make="Acme", Model="Roadrunner", Software="flipfleet")
    tags.get_ifd(ExifTags.IFD.Exif).update({0x927C: maker_note, WIDTH: ALIGNED[0], HEIGHT: ALIGNED[1]})
    source = jpeg("4:2:0", exif=tags.tobytes())
    before, after = exif_segment(source), exif_segment(transform(source, operation))

    assert len(after) == len(before)
    kept = decode(transform(source, operation)).getexif()
    assert {tag: kept[tag] for tag in kept if tag != ExifTags.IFD.Exif} == {
        tag: value for tag, value in tags.items() if tag != ExifTags.Base.Orientation}
    directory = kept.get_ifd(ExifTags.IFD.Exif)
    assert directory[0x927C] == maker_note
    turned = operation == Image.Transpose.ROTATE_270
    assert (directory[WIDTH], directory[HEIGHT]) == (ALIGNED[::-1] if turned else ALIGNED)
    # IFD0 (at 8, after the 4+6-byte segment header and the TIFF header) is all that moved.
    ifd0 = 4 + 6 + 8
    order = {b"II": "little", b"MM": "big"}[before[10:12]]
    entries = int.from_bytes(before[ifd0 : ifd0 + 2], order)
    assert int.from_bytes(after[ifd0 : ifd0 + 2], order) == entries - 1
    ifd0_end = ifd0 + 2 + 12 * entries + 4
    unchanged = slice(ifd0_end, None)
    if turned:  # the Exif directory's width and height entries change places' values
        assert after[unchanged] != before[unchanged]
    else:
        assert after[unchanged] == before[unchanged]
    assert after[ifd0_end - 12 : ifd0_end] == bytes(12)


def test_without_orientation():
    source = jpeg("4:2:0", exif=exif(Orientation=8, Make="Acme").tobytes())
    result = jpeg_lossless.without_orientation(source)
    assert dict(decode(result).getexif()) == {ExifTags.Base.Make: "Acme"}
    assert result[-1000:] == source[-1000:]


def test_an_mpo_gives_its_main_picture_as_a_plain_jpeg():
    main = photo(ALIGNED)
    mpo = encode(main, "MPO", save_all=True, append_images=[photo((160, 120))], quality=90)
    assert decode(mpo).format == "MPO"

    result = transform(mpo, DOWN)

    assert not any(seg[4:].startswith(b"MPF\x00") for seg in app_segments(result))
    assert decode(result).format == "JPEG"
    assert getattr(decode(result), "n_frames", 1) == 1
    assert result == transform(encode(main, "JPEG", quality=90), DOWN)


def test_what_follows_the_end_of_the_picture_is_dropped():
    source = jpeg("4:2:0")
    assert transform(source + b"\x00trailing bytes\xff\xd9", DOWN) == transform(source, DOWN)
