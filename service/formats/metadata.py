"""EXIF and XMP, shared by the formats that carry them (JPEG, PNG, WebP, TIFF, HEIC, AVIF): a flip
applies the orientation, so it is taken out of both; a quarter turn swaps the EXIF's pixel
dimensions; a flipped picture's EXIF thumbnail would show the wrong picture and is unlinked. An
ICC profile needs nothing of the sort: each format carries it through its writer's
`icc_profile` parameter, as it came.

Edits on an EXIF's bytes keep every other byte where it was, so that offsets into it (a maker
note's) stay true; what Pillow must rewrite instead is rewritten through Image.Exif."""

from __future__ import annotations

import re

from PIL import ExifTags, Image

from service.formats import ifd
from service.formats.base import PILLOW_WRITE_ERRORS, TooCostly, pillow_reading

ORIENTATION = ExifTags.Base.Orientation
EXIF_HEADER = b"Exif\x00\x00"
# The EXIF's width and height of the picture, in its Exif directory.
PIXEL_DIMENSIONS = (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight)
# The XMP forms of the orientation, as ImageOps.exif_transpose removes them.
XMP_ORIENTATION = (re.compile(rb'tiff:Orientation="[0-9]"'), re.compile(rb"<tiff:Orientation>[0-9]</tiff:Orientation>"))
# Pillow's errors on an EXIF that it read but cannot serialise: a value that does not pack, a
# directory cut short that it reads only then, a tag it lists but kept no value of.
EXIF_WRITE_ERRORS = (*PILLOW_WRITE_ERRORS, EOFError, KeyError)
# A params value: the source carries this metadata, but it cannot be written (the writer drops it).
UNWRITABLE = object()


def xmp_without_orientation(xmp: bytes) -> bytes:
    """The XMP packet `xmp` without its tiff:Orientation."""
    for pattern in XMP_ORIENTATION:
        xmp = pattern.sub(b"", xmp)
    return xmp


def check_directories(held: ifd.Counts, which_have: str) -> None:
    """Refuse TIFF directories (a TIFF's pages, or an EXIF) that cost too much to read: Pillow
    makes a Python object of every number, and reads every entry in a loop turn or more."""
    if held.largest_tag > ifd.MOST_VALUES:
        raise TooCostly(f"{which_have} a tag of {held.largest_tag:,} numbers (a TIFF's strip or tile offsets), more "
                        f"than the {ifd.MOST_VALUES:,} a picture may have: reading each costs memory before any pixel")
    if held.entries > ifd.MOST_ENTRIES:
        raise TooCostly(f"{which_have} more than {ifd.MOST_ENTRIES:,} tags in all, the most a picture may have "
                        "(a TIFF page or an EXIF has tens): reading each costs time before any pixel")
    if held.numbers > ifd.MOST_NUMBERS:
        raise TooCostly(f"{which_have} tags of more than {ifd.MOST_NUMBERS:,} numbers in all (a fraction counting "
                        "10 each), the most a picture may have: reading each costs time before any pixel")


def check_exifs(exifs: list[bytes]) -> None:
    """Refuse an EXIF whose directories cost too much to read (check_directories)."""
    for exif in exifs:
        check_directories(ifd.counts(exif.removeprefix(EXIF_HEADER), directories=2), "the picture's EXIF has")


def read(im: Image.Image) -> Image.Exif:
    """The EXIF of `im`'s current frame, as Pillow's getexif() reads it."""
    with pillow_reading(im):
        return im.getexif()


def exif_params(exif: Image.Exif, turned: bool) -> dict:
    """The writer's `exif` parameter for the source's EXIF (read by Pillow's getexif()), without
    the orientation tag (the flip applies it), and with its PixelXDimension and PixelYDimension
    swapped if the flip `turned` the picture a quarter; UNWRITABLE when Pillow cannot write it."""
    if not exif:
        return {}
    if ORIENTATION in exif:
        del exif[ORIENTATION]
    serialise = (lambda: pixel_dimensions_swapped(exif).tobytes()) if turned else exif.tobytes
    return {"exif": exif_bytes(serialise)}


def pixel_dimensions_swapped(exif: Image.Exif) -> Image.Exif:
    """`exif`, changed: its Exif directory's PixelXDimension and PixelYDimension swapped."""
    if ExifTags.IFD.Exif in exif:
        swap_pixel_dimensions(exif.get_ifd(ExifTags.IFD.Exif))
    return exif


def swap_pixel_dimensions(directory: dict) -> None:
    """The Exif `directory`'s width and height swapped, those it has: a lone one takes the other's tag."""
    width, height = (directory.pop(tag, None) for tag in PIXEL_DIMENSIONS)
    for tag, value in zip(PIXEL_DIMENSIONS, (height, width), strict=True):
        if value is not None:
            directory[tag] = value


def exif_bytes(serialise):
    """What `serialise` makes of an EXIF, or UNWRITABLE when Pillow cannot make it."""
    try:
        return serialise()
    except EXIF_WRITE_ERRORS:
        return UNWRITABLE


def with_dimensions_swapped(body: bytes) -> bytes:
    """The EXIF `body` (with its "Exif" header) with its Exif directory's PixelXDimension and
    PixelYDimension swapped, the rest byte for byte: each entry takes the other's type, count and
    value, so each value keeps the type it was stored as; a lone one takes the other's tag.
    Unchanged when it has neither."""
    tiff = body[len(EXIF_HEADER) :]
    order = _byte_order(tiff)
    if order is None:
        return body
    pointer = _ifd_entries(tiff, int.from_bytes(tiff[4:8], order), order).get(ExifTags.IFD.Exif)
    if pointer is None:
        return body
    entries = _ifd_entries(tiff, int.from_bytes(tiff[pointer + 8 : pointer + 12], order), order)
    found = {tag: len(EXIF_HEADER) + entries[tag] for tag in PIXEL_DIMENSIONS if tag in entries}
    swapped = bytearray(body)
    if len(found) == 2:
        width, height = found.values()
        swapped[width + 2 : width + 12] = body[height + 2 : height + 12]
        swapped[height + 2 : height + 12] = body[width + 2 : width + 12]
    elif found:
        ((tag, at),) = found.items()
        (other,) = set(PIXEL_DIMENSIONS) - {tag}
        # The two tags are next to each other: the directory stays in the order of its tags.
        swapped[at : at + 2] = other.to_bytes(2, order)
    return bytes(swapped)


def without_thumbnail(body: bytes) -> bytes:
    """The EXIF `body` with its thumbnail's directory (IFD1) unlinked, the rest byte for byte as it
    was. (Unflipped, the thumbnail would show the wrong picture.)"""
    found = _first_directory(body)
    if found is None:
        return body
    order, first, link = found
    if not int.from_bytes(body[link : link + 4], order):
        return body
    return body[:link] + b"\0\0\0\0" + body[link + 4 :]


def without_orientation(body: bytes) -> bytes:
    """The EXIF `body` with the orientation entry taken out of its first directory in place: the
    entries after it and the link to the next directory move up 12 bytes, and 12 zero bytes follow,
    so that every offset in it, a maker note's included, stays true. Unchanged without one."""
    found = _first_directory(body)
    if found is None:
        return body
    order, first, link = found
    tiff = len(EXIF_HEADER)
    entry = _ifd_entries(body[tiff:], first - tiff, order).get(ORIENTATION)
    if entry is None:
        return body
    entry += tiff
    count = int.from_bytes(body[first : first + 2], order)
    return (body[:first] + (count - 1).to_bytes(2, order) + body[first + 2 : entry]
            + body[entry + 12 : link + 4] + bytes(12) + body[link + 4 :])


def _byte_order(tiff: bytes) -> str | None:
    """The byte order of the TIFF structure an EXIF holds, or None when it is not one."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    return order if len(tiff) >= 8 else None


def _ifd_entries(tiff: bytes, offset: int, order: str) -> dict[int, int]:
    """Tag -> offset in `tiff` of its 12-byte entry, for the entries of the directory at `offset`
    that `tiff` holds whole."""
    if offset + 2 > len(tiff):
        return {}
    count = int.from_bytes(tiff[offset : offset + 2], order)
    starts = range(offset + 2, min(offset + 2 + 12 * count, len(tiff) - 11), 12)
    return {int.from_bytes(tiff[at : at + 2], order): at for at in starts}


def _first_directory(body: bytes) -> tuple[str, int, int] | None:
    """The EXIF's byte order, and where in `body` its first directory (IFD0) starts and its link to
    the next one is; None when that directory is not held whole."""
    tiff = body[len(EXIF_HEADER) :]
    order = _byte_order(tiff)
    if order is None:
        return None
    first = int.from_bytes(tiff[4:8], order)
    if first + 2 > len(tiff):
        return None
    link = first + 2 + 12 * int.from_bytes(tiff[first : first + 2], order)  # after its entries
    if link + 4 > len(tiff):
        return None
    return order, len(EXIF_HEADER) + first, len(EXIF_HEADER) + link
