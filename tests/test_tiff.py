"""TIFF (service/formats/tiff.py): compression, tags, EXIF directories, resolution; directories and tiles bounded."""

import io
import struct

import pytest
from PIL import ExifTags, Image

from service import imaging
from service.formats import ifd
from tests.flips import EXIF_DIRECTORY, SRGB, flips_exactly, handmade_tiff, tiff_entries
from tests.pictures import (
    SIZE,
    decode,
    encode,
    exif_of_entries,
    photo,
    picture,
    strips_tiff,
    tiff_in_one_tile,
    tiff_of_entries,
)


def test_tiff_keeps_its_compression():
    source = encode(picture("RGB"), "TIFF", compression="tiff_lzw")
    assert decode(imaging.flip(source).data).info["compression"] == "tiff_lzw"


@pytest.mark.parametrize("directory", [False, True])
def test_bigtiff_flips_and_keeps_its_tags(directory):
    # Pillow's bytes for a BigTIFF's own tags have a BigTIFF header its TIFF writer cannot read
    # back: struct.error, a 500, for every BigTIFF. (Pillow writes BigTIFF uncompressed only.)
    exif = Image.Exif()
    exif[ExifTags.Base.Software], exif[ExifTags.Base.Artist] = "flipfleet", "A"
    if directory:
        exif[ExifTags.IFD.Exif] = EXIF_DIRECTORY
    source = encode(picture("RGB"), "TIFF", big_tiff=True, exif=exif.tobytes(), dpi=(300, 300))
    assert source[2] == 0x2B  # a BigTIFF

    result, flipped = flips_exactly(source)

    assert result.dropped == ()
    assert (flipped.getexif()[ExifTags.Base.Software], flipped.getexif()[ExifTags.Base.Artist]) == ("flipfleet", "A")
    assert flipped.info["dpi"] == (300, 300)
    if directory:
        assert flipped.getexif().get_ifd(ExifTags.IFD.Exif)[0x9003] == EXIF_DIRECTORY[0x9003]


def test_adobe_deflate_tiff_drops_only_its_exif_directory():
    # As Photoshop writes it: Pillow's libtiff writer (every compressed TIFF) cannot write an
    # EXIF directory ("Error setting from dictionary", a 500); the rest is kept.
    tags = {ExifTags.Base.Software: "Adobe Photoshop CS Windows", ExifTags.Base.Artist: "A",
            ExifTags.Base.InterColorProfile: SRGB, ExifTags.IFD.Exif: EXIF_DIRECTORY,
            ExifTags.Base.XResolution: 300.0, ExifTags.Base.YResolution: 300.0, ExifTags.Base.ResolutionUnit: 2}
    source = handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), deflate=True, tags=tags)

    result, flipped = flips_exactly(source)

    assert result.dropped == ("exif",)
    assert flipped.info["compression"] == "tiff_adobe_deflate"
    assert flipped.info["icc_profile"] == SRGB
    assert flipped.info["dpi"] == (300.0, 300.0)
    assert flipped.getexif()[ExifTags.Base.Software] == "Adobe Photoshop CS Windows"
    assert flipped.getexif()[ExifTags.Base.Artist] == "A"
    assert not flipped.getexif().get_ifd(ExifTags.IFD.Exif)


def test_uncompressed_tiff_keeps_its_exif_directory():
    # Pillow's own writer (no compression) writes the EXIF directory: nothing is dropped.
    tags = {ExifTags.Base.Software: "flipfleet", ExifTags.IFD.Exif: EXIF_DIRECTORY}
    source = handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), tags=tags)

    result, flipped = flips_exactly(source)

    assert result.dropped == ()
    kept = flipped.getexif().get_ifd(ExifTags.IFD.Exif)
    assert (kept[0x9003], kept[0xA002]) == (EXIF_DIRECTORY[0x9003], EXIF_DIRECTORY[0xA002])


@pytest.mark.parametrize("deflate", [False, True])
def test_source_layout_tags_are_not_written_back(deflate):
    # Separate colour planes, decoded to interleaved RGB: the source's PlanarConfiguration (and
    # BitsPerSample, ColorMap, Photometric...) written over the writer's own described planes
    # that the RGB written is not: a 200 with a TIFF that does not decode.
    source = handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), planes=True, deflate=deflate,
                            tags={ExifTags.Base.Software: "flipfleet"})
    assert Image.open(io.BytesIO(source)).tag_v2[284] == 2

    result, flipped = flips_exactly(source)

    assert result.dropped == ()
    assert flipped.tag_v2[284] == 1
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"


@pytest.mark.parametrize("exif_too", [True, False], ids=["exif-and-xmp", "xmp-only"])
def test_a_tiff_orientation_in_its_xmp_is_applied_once(exif_too):
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
           b'</x:xmpmeta>')
    tags = ImageFileDirectory_v2()
    tags[700], tags.tagtype[700] = xmp, 1
    if exif_too:
        tags[ExifTags.Base.Orientation] = 6
    data = encode(photo((40, 30)), "TIFF", tiffinfo=tags)
    sizes = []
    for _ in range(3):  # each flip of the last one's answer: turned once, then only flipped
        result = imaging.flip(data)
        data = result.data
        sizes.append((result.width, result.height))
    assert sizes == [(30, 40)] * 3
    kept = decode(data).tag_v2[700]
    assert b"rdf:Description" in kept and b"tiff:Orientation" not in kept


def test_a_tiff_without_a_resolution_gets_none():
    # Pillow reads it as 1x1 dpi; written back, that would tell every viewer so.
    flipped = decode(imaging.flip(encode(photo((30, 20)), "TIFF")).data)
    assert 282 not in flipped.tag_v2 and 296 not in flipped.tag_v2


def test_damaged_tiff_with_unwritable_tags_is_not_an_image():
    # As Tests/images/tiff_tiled_jpeg_oob_read.tif: a PlanarConfiguration stored as a BYTE (which
    # did not pack again: struct.error, a 500) and strips beyond the end of the file.
    source = bytearray(handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), deflate=True,
                                      tags={ExifTags.Base.Software: "flipfleet"}))
    for _, at, tag, _ in list(tiff_entries(bytes(source))):
        if tag == 284:  # PlanarConfiguration
            source[at + 2 : at + 4] = struct.pack("<H", 1)  # BYTE
        if tag == 273:  # StripOffsets
            source[at + 8 : at + 12] = struct.pack("<I", len(source) + 1000)
    with pytest.raises(imaging.NotAnImage, match="damaged"):
        imaging.flip(bytes(source))


def test_a_tiff_of_more_strips_than_the_bound_is_refused_before_pillow_reads_them():
    with pytest.raises(imaging.TooCostly, match="a tag of 200,001 numbers"):
        imaging.flip(strips_tiff(200_001))
    assert imaging.flip(strips_tiff(200_000)).height == 200_000


@pytest.mark.parametrize("pages", [1, 100])
def test_a_tiff_of_more_tags_than_the_bound_is_refused_before_pillow_reads_them(pages):
    # Each entry costs Pillow a Python loop turn or more: 20,000 on one page (240 KB) took 1.2 s.
    with pytest.raises(imaging.TooCostly, match="more than 5,000 tags in all"):
        imaging.flip(tiff_of_entries(pages, ifd.MOST_ENTRIES + 1))
    flipped = imaging.flip(tiff_of_entries(pages, ifd.MOST_ENTRIES))
    assert (flipped.frames, flipped.height) == (pages, 4)


def test_a_tiffs_exif_directory_counts_with_its_pages():
    with pytest.raises(imaging.TooCostly, match="pages have more than 5,000 tags in all"):
        imaging.flip(encode(picture("RGB"), "TIFF", exif=exif_of_entries(3, in_exif_directory=ifd.MOST_ENTRIES)))
    assert imaging.flip(encode(picture("RGB"), "TIFF", exif=exif_of_entries(3, in_exif_directory=100))).height


@pytest.mark.parametrize(("size", "tile", "refused"), [
    ((16, 16), (4_096, 4_096), True),
    ((16, 16), (1_024, 1_040), True),
    ((16, 16), (1_024, 1_024), False),  # small enough whatever the picture
    ((1_100, 1_000), (1_104, 1_008), False),  # the picture's sides rounded up to 16
    ((1_100, 1_000), (1_120, 1_008), True),
], ids=str)
def test_a_tiff_tile_larger_than_its_picture_is_refused_before_it_is_decoded(size, tile, refused):
    source = tiff_in_one_tile(size, tile)
    if refused:
        with pytest.raises(imaging.TooCostly, match="tiles are larger than its"):
            imaging.flip(source)
    else:
        assert decode(imaging.flip(source).data).size == size


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_tags_of_more_numbers_in_all_than_the_bound_are_refused_before_pillow_reads_them(fmt):
    # Fractions cost Pillow about 12 us each: 800,000 of them in one EXIF (6.4 MB) took 40 s.
    def with_fractions(count: int) -> bytes:
        exif = bytearray(exif_of_entries(5, in_exif_directory=5))
        for index in (0, 1, 2):  # three tags of IFD0 and two of the EXIF directory, at one place
            struct.pack_into("<HII", exif, 6 + 8 + 2 + 12 * index + 2, 5, count, 8)
        for index in (0, 1):
            struct.pack_into("<HII", exif, 6 + 8 + 2 + 12 * 5 + 4 + 2 + 12 * index + 2, 5, count, 8)
        return encode(picture("RGB"), fmt, exif=bytes(exif + bytes(8 * count)))

    most = ifd.MOST_NUMBERS // 10 // 5  # each of the five tags' fractions
    with pytest.raises(imaging.TooCostly, match="more than 500,000 numbers in all"):
        imaging.flip(with_fractions(most + 1))
    assert imaging.flip(with_fractions(most - 10)).format == fmt

