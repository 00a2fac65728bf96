"""TIFF directories (a TIFF's pages, and every EXIF: an EXIF is a TIFF too), read without
decoding anything: how many numbers their largest tag holds, and how many entries they have.

Pillow reads every number of every tag of a directory as it opens the file, a Python object or
more each: a 24 MB TIFF of one-row strips lists 12 million strip offsets and byte counts, which
took 30 s and 3.5 GiB before any pixel limit was looked at. It reads a page's entries more than
once, a Python loop turn or more each: 100 pages of 17,000 entries (20 MB) took more than 10 s,
one page of 20,000 (240 KB) 1.2 s. An EXIF is a TIFF's directories too, read the same way: one
of 32,000 entries (380 KB) in a WebP took 0.7 s. Counting them is cheap.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# The most numbers a tag may hold: a 50 MP picture in tiles of 16x16, the smallest TIFF allows, has
# 195,313; Pillow opened a TIFF of 200,000 strips in 0.6 s and 66 MiB.
MOST_VALUES = 200_000
# The most entries all pages' directories may have, with the first page's EXIF directories (an
# EXIF is a TIFF too): a page has 10 to 50, an EXIF tens. Each costs about 50 us when the first
# page's are written back: 5,000 took 0.23 s in a TIFF, 0.03 to 0.15 s in a JPEG, PNG, WebP, AVIF.
MOST_ENTRIES = 5_000
# Bytes a value of each type Pillow reads (TiffImagePlugin's loaders): it skips a tag of another
# type, or one whose values the data cannot hold (a damaged count), and so are they here.
VALUE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}
# BYTE, ASCII and UNDEFINED values Pillow reads as one bytes or str (an ICC profile, an XMP, a
# comment); every other type's as a number each.
ONE_OBJECT_TYPES = frozenset({1, 2, 7})
# The most numbers all the directories counted may hold, each weighted by what Pillow spends on
# it (NUMBER_WEIGHTS): a 50 MP picture in tiles of 16x16 has 390,626 offsets and byte counts, one
# in 200,000 strips 400,000. An integer costs about 1.2 us to read and write back, a DOUBLE 2.3, a
# RATIONAL or SRATIONAL 12 (a Fraction each): an EXIF of 800,000 RATIONALs (6.4 MB) took 40 s.
MOST_NUMBERS = 500_000
NUMBER_WEIGHTS = {5: 10, 10: 10, 12: 2}
# The directories getexif() reads besides a page's own, by the tag that points to each: the
# first page's EXIF and GPS directories, and the EXIF directory's interoperability one.
EXIF_DIRECTORY, GPS_DIRECTORY, INTEROP_DIRECTORY = 34665, 34853, 40965
# The types of a pointer Pillow follows, as struct formats: SHORT, LONG, SSHORT, SLONG, IFD, LONG8.
POINTER_FORMATS = {3: "H", 4: "I", 8: "h", 9: "i", 13: "I", 16: "Q"}
# The first four bytes -> byte order and whether it is a BigTIFF (8-byte offsets and counts).
HEADERS = {b"II*\0": ("<", False), b"MM\0*": (">", False), b"II+\0": ("<", True), b"MM\0+": (">", True)}


class Counts(NamedTuple):
    largest_tag: int  # the most numbers one tag holds
    entries: int  # the entries of all the directories
    numbers: int  # the numbers of all their tags, weighted (NUMBER_WEIGHTS)


def counts(data: bytes, directories: int) -> Counts:
    """What the first `directories` directories (pages) and the first one's EXIF, GPS and
    interoperability directories (what Pillow's getexif() reads) hold; nothing if `data` is not a
    TIFF (an EXIF is one), and what could be read of a directory cut short (Pillow says what is
    wrong). Only numbers Pillow reads count: of a type it knows, that the data can hold."""
    if data[:4] not in HEADERS:
        return Counts(0, 0, 0)
    order, big = HEADERS[data[:4]]
    # An entry: tag, type, count of values, value or offset; a directory: entries, then the next's offset.
    entry = struct.Struct(order + ("HHQ8s" if big else "HHI4s"))
    word = struct.Struct(order + ("Q" if big else "I"))
    entries_count = struct.Struct(order + ("Q" if big else "H"))
    largest = entries_in_all = numbers = pages = 0
    seen_pages = set()
    to_read = [(word.unpack_from(data, 8 if big else 4)[0] if len(data) >= 16 else 0, "page")]
    while to_read:
        offset, kind = to_read.pop()
        if not offset or offset + entries_count.size > len(data) or offset in seen_pages:
            continue
        start = offset + entries_count.size
        entries = min(entries_count.unpack_from(data, offset)[0], (len(data) - start) // entry.size)
        entries_in_all += entries
        if entries_in_all > MOST_ENTRIES:
            break
        table = list(entry.iter_unpack(data[start : start + entries * entry.size]))
        read = [(value_type, count) for _, value_type, count, _ in table if value_type not in ONE_OBJECT_TYPES
                and count * VALUE_BYTES.get(value_type, len(data) + 1) <= len(data)]
        largest = max([largest, *(count for _, count in read)])
        numbers += sum(count * NUMBER_WEIGHTS.get(value_type, 1) for value_type, count in read)
        # Each pointed to is read once for each pointer, but for pages: depth two at most, no loop.
        follows = ({EXIF_DIRECTORY: "exif", GPS_DIRECTORY: "gps"} if kind == "page" and pages == 0
                   else {INTEROP_DIRECTORY: "interop"} if kind == "exif" else {})
        to_read += [(_pointer(field, value_type, count, data, order), follows[tag])
                    for tag, value_type, count, field in table if tag in follows]
        if kind == "page":
            seen_pages.add(offset)
            pages += 1
            after = start + entries * entry.size
            if pages < directories and after + word.size <= len(data):
                to_read.append((word.unpack_from(data, after)[0], "page"))
    return Counts(largest, entries_in_all, numbers)


def _pointer(field: bytes, value_type: int, count: int, data: bytes, order: str) -> int:
    """Where a pointer entry's directory is, its value read by its type as Pillow reads it (from
    elsewhere in the data when it does not fit the entry's field); 0 if Pillow would not follow it."""
    if count != 1 or value_type not in POINTER_FORMATS:
        return 0
    value = struct.Struct(order + POINTER_FORMATS[value_type])
    if value.size > len(field):
        at = struct.unpack(order + "I", field)[0]
        field = data[at : at + value.size]
    return max(value.unpack_from(field)[0], 0) if len(field) >= value.size else 0


# PageNumber: SHORT[2], the page's number and the count of pages.
PAGE_NUMBER, SHORT = 297, 3


def with_page_numbers(data: bytes, numbers: list[tuple[int, int] | None]) -> bytes:
    """The TIFF `data` with each directory's PageNumber entry holding numbers[i] (None: left as
    it is). Pillow's libtiff writer (any compressed TIFF) passes the pair to libtiff as a count
    and a pointer, which libtiff reads as the two numbers: (2, the low 16 bits of an address)."""
    if data[:4] not in HEADERS or not any(numbers):
        return data
    order, big = HEADERS[data[:4]]
    entry = struct.Struct(order + ("HHQ" if big else "HHI"))
    count_format, offset_format = (order + "Q", order + "Q") if big else (order + "H", order + "I")
    count_size, offset_size = struct.calcsize(count_format), struct.calcsize(offset_format)
    value_size = 8 if big else 4
    patched = bytearray(data)
    offset = struct.unpack_from(offset_format, data, 8 if big else 4)[0]
    seen: set[int] = set()
    for wanted in numbers:
        if not offset or offset in seen or offset + count_size > len(data):
            break
        seen.add(offset)
        (entries,) = struct.unpack_from(count_format, data, offset)
        first = offset + count_size
        end = first + entries * (entry.size + value_size)
        if end + offset_size > len(data):
            break
        if wanted is not None:
            for at in range(first, end, entry.size + value_size):
                tag, kind, values = entry.unpack_from(data, at)
                if tag == PAGE_NUMBER and kind == SHORT and values == 2:
                    struct.pack_into(order + "HH", patched, at + entry.size, *wanted)
        offset = struct.unpack_from(offset_format, data, end)[0]
    return bytes(patched)
