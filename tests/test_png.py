"""PNG (service/formats/png.py): chunks kept, counted and bounded; 16-bit colour keys."""

import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from service import imaging
from service.formats import ifd, png
from tests.flips import cornered
from tests.pictures import (
    decode,
    encode,
    exif_of_entries,
    picture,
    png_16_bits,
    png_chunk,
    png_idat_padded,
    png_padded,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


def test_a_png_of_more_chunks_than_any_picture_has_is_refused_before_pillow_reads_them():
    # Each empty chunk is 12 bytes: 25 MB of them take Pillow past the deadline.
    with pytest.raises(imaging.TooCostly, match="chunks before its pixels"):
        imaging.flip(png_padded(png.MOST_CHUNKS))
    flipped = imaging.flip(png_padded(png.MOST_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


def test_a_png_of_more_chunks_in_all_than_any_picture_has_is_refused_before_pillow_reads_them():
    # Empty IDAT chunks are 12 bytes each too: 2 million took Pillow 3.2 s to decode.
    with pytest.raises(imaging.TooCostly, match="more than 100,000 chunks, "):
        imaging.flip(png_idat_padded(png.MOST_ALL_CHUNKS))
    flipped = imaging.flip(png_idat_padded(png.MOST_ALL_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


def test_a_16_bit_colour_key_is_written_for_the_8_bit_colours():
    # tRNS holds a 16-bit colour: kept as it is over 8-bit colours, 300 would be no colour at all.
    source = png_16_bits("RGB")
    header_end = 8 + 25  # the signature, then IHDR's length, type, 13 bytes and CRC
    key = struct.pack(">HHH", 300, 400, 50_000)
    result = imaging.flip(source[:header_end] + png_chunk(b"tRNS", key) + source[header_end:])
    assert decode(result.data).info["transparency"] == (1, 1, 195)
    assert result.dropped == (imaging.HIGH_BIT_DEPTH,)


ORIENTED_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6" dc:title="x"/>'
                '</rdf:RDF></x:xmpmeta>')


def _png_with_chunks(*chunks: tuple[bytes, bytes], **text: tuple) -> bytes:
    """A 40x30 PNG with these raw ancillary chunks, and text chunks: keyword -> PngInfo method, arguments."""
    info = PngImagePlugin.PngInfo()
    for kind, body in chunks:
        info.add(kind, body)
    for keyword, (method, *arguments) in text.items():
        getattr(info, method)(keyword, *arguments)
    return encode(cornered((40, 30)), "PNG", pnginfo=info)


def _chunks(data: bytes) -> dict[bytes, list[bytes]]:
    found, at = {}, 8
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        found.setdefault(kind, []).append(data[at + 8 : at + 8 + length])
        at += 12 + length
    return found


@pytest.mark.parametrize("kind", [b"gAMA", b"cHRM", b"sRGB", b"sBIT"])
def test_a_pngs_colour_space_chunks_are_kept_as_they_are(kind):
    # Without an ICC profile, gAMA and cHRM alone say what the colours mean: dropped, they shift.
    body = {b"gAMA": struct.pack(">I", 100_000), b"cHRM": struct.pack(">8I", *range(31_270, 39_270, 1_000)),
            b"sRGB": b"\x01", b"sBIT": b"\x05\x06\x05"}[kind]
    result = imaging.flip(_png_with_chunks((kind, body)))
    assert _chunks(result.data)[kind] == [body]


def test_a_pngs_text_is_kept_and_its_xmp_loses_only_its_orientation():
    source = _png_with_chunks(Title=("add_text", "flip"), Comment=("add_text", "long " * 100, True),
                              Author=("add_itxt", "Zoë", "fr", "Auteur"),
                              **{"XML:com.adobe.xmp": ("add_itxt", ORIENTED_XMP)})
    result = imaging.flip(source)
    flipped = decode(result.data)
    assert (result.width, result.height) == (30, 40)  # turned by the XMP's orientation, once
    assert {key: flipped.text[key] for key in ("Title", "Comment", "Author")} == {
        "Title": "flip", "Comment": "long " * 100, "Author": "Zoë"}
    assert flipped.text["XML:com.adobe.xmp"] == ORIENTED_XMP.replace('tiff:Orientation="6"', "")
    assert imaging.flip(result.data).height == 40  # and not turned again


def test_a_pngs_text_after_its_pixels_is_kept_but_not_colour_chunks_where_they_are_invalid():
    source = _png_with_chunks(Title=("add_text", "before"))
    end = source.rindex(b"IEND") - 4
    after = [png_chunk(b"tEXt", b"Comment\0after the pixels"), png_chunk(b"zTXt", b"Note\0\0" + zlib.compress(b"z")),
             png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + ORIENTED_XMP.encode()),
             png_chunk(b"gAMA", struct.pack(">I", 100_000))]
    source = source[:end] + b"".join(after) + source[end:]
    result = imaging.flip(source)
    flipped = decode(result.data)
    flipped.load()  # Pillow reads text after the pixels as it reaches it
    assert (result.width, result.height) == (30, 40)  # turned by the XMP's orientation
    assert {key: flipped.text[key] for key in ("Title", "Comment", "Note")} == {
        "Title": "before", "Comment": "after the pixels", "Note": "z"}
    assert flipped.text["XML:com.adobe.xmp"] == ORIENTED_XMP.replace('tiff:Orientation="6"', "")
    assert b"gAMA" not in _chunks(result.data)
    order = [kind for kind in _chunk_kinds(result.data) if kind in (b"IDAT", b"tEXt", b"zTXt", b"iTXt")]
    assert order == [b"tEXt", b"IDAT", b"tEXt", b"zTXt", b"iTXt"]  # each where it was


def test_a_png_of_text_after_its_pixels_flips_again():
    # Written before the pixels, 25,000 of them would be more than a PNG may have there.
    source = encode(picture("RGB"), "PNG")
    end = source.rindex(b"IEND") - 4
    source = source[:end] + png_chunk(b"tEXt", b"Comment\0after") * 25_000 + source[end:]
    twice = imaging.flip(imaging.flip(source).data)
    assert _chunk_kinds(twice.data).count(b"tEXt") == 25_000


def _chunk_kinds(data: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at + 8 <= len(data):
        kinds.append(data[at + 4 : at + 8])
        at += 12 + int.from_bytes(data[at : at + 4], "big")
    return kinds


@pytest.mark.parametrize(("kind", "after_pixels"), [(b"tEXt", False), (b"zTXt", False), (b"tEXt", True),
                                                    (b"zTXt", True), (b"iTXt", True)])
def test_a_pngs_exif_in_imagemagicks_text_is_counted_too(kind, after_pixels):
    # Pillow's getexif() reads the hex text when there is no eXIf chunk.
    exif = exif_of_entries(ifd.MOST_ENTRIES + 1).removeprefix(b"Exif\0\0")
    text = f"\nexif\n{len(exif):8d}\n{exif.hex()}\n".encode()
    body = {b"tEXt": text, b"zTXt": b"\0" + zlib.compress(text), b"iTXt": b"\0\0\0\0" + text}[kind]
    source = encode(picture("RGB"), "PNG")
    at = source.rindex(b"IEND") - 4 if after_pixels else 33  # before the end, or after the header
    source = source[:at] + png_chunk(kind, b"Raw profile type exif\0" + body) + source[at:]
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(source)


@pytest.mark.parametrize(("kind", "body"), [
    (b"sBIT", b"\x0c\x0c\x0c"),  # 12 significant bits of the 16: more than the 8 written
    (b"tIME", struct.pack(">HBBBBB", 2024, 1, 2, 3, 4, 5)),  # the flip is a change
    (b"tEXt", b"Raw profile type exif\0exif\n  10\n457869660000"),  # the EXIF, written on its own
], ids=["16-bit sBIT", "tIME", "ImageMagick EXIF"])
def test_png_chunks_that_would_be_wrong_are_not_kept(kind, body):
    source = png_16_bits("RGB") if kind == b"sBIT" else _png_with_chunks()
    source = source[:33] + png_chunk(kind, body) + source[33:]  # after the IHDR
    assert kind not in _chunks(imaging.flip(source).data)


def test_the_exif_of_a_png_after_its_pixels_is_counted_too():
    source = encode(picture("RGB"), "PNG")
    end = source.rindex(b"IEND") - 4
    exif = exif_of_entries(ifd.MOST_ENTRIES + 1).removeprefix(b"Exif\0\0")
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(source[:end] + png_chunk(b"eXIf", exif) + source[end:])

