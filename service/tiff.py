"""A TIFF's directories, read without decoding anything: how many values its largest tag holds,
and how many entries its directories have.

Pillow reads every value of every tag of a directory as it opens the file, a Python object or
more each: a 24 MB TIFF of one-row strips lists 12 million strip offsets and byte counts, which
took 30 s and 3.5 GiB before any pixel limit was looked at. It reads a page's entries more than
once, a Python loop turn or more each: 100 pages of 17,000 entries (20 MB) took more than 10 s,
one page of 20,000 (240 KB) 1.2 s. Counting them is cheap.
"""

from __future__ import annotations

import struct

# The most values a tag may hold: a 50 MP picture in tiles of 16x16, the smallest TIFF allows, has
# 195,313; Pillow opened a TIFF of 200,000 strips in 0.6 s and 66 MiB.
MOST_VALUES = 200_000
# The most entries all pages' directories may have: a page has 10 to 50 (the EXIF's own directory
# is apart). Each costs about 50 us when the first page's are written back: 5,000 took 0.23 s.
MOST_ENTRIES = 5_000
# The first four bytes -> byte order and whether it is a BigTIFF (8-byte offsets and counts).
_HEADERS = {b"II*\0": ("<", False), b"MM\0*": (">", False), b"II+\0": ("<", True), b"MM\0+": (">", True)}


def counts(data: bytes, directories: int) -> tuple[int, int]:
    """The most values one tag holds, and the entries of all, in the first `directories`
    directories (pages); (0, 0) if `data` is not a TIFF, and what could be read of a directory
    cut short (Pillow says what is wrong)."""
    if data[:4] not in _HEADERS:
        return 0, 0
    order, big = _HEADERS[data[:4]]
    # An entry: tag, type, count of values, value or offset; a directory: entries, then the next's offset.
    entry = struct.Struct(order + ("HHQQ" if big else "HHII"))
    word = struct.Struct(order + ("Q" if big else "I"))
    entries_count = struct.Struct(order + ("Q" if big else "H"))
    largest, entries_in_all, seen = 0, 0, set()
    offset = word.unpack_from(data, 8 if big else 4)[0] if len(data) >= 16 else 0
    for _ in range(directories):
        if not offset or offset in seen or offset + entries_count.size > len(data):
            break
        seen.add(offset)
        start = offset + entries_count.size
        entries = min(entries_count.unpack_from(data, offset)[0], (len(data) - start) // entry.size)
        entries_in_all += entries
        if entries_in_all > MOST_ENTRIES:
            break
        table = data[start : start + entries * entry.size]
        largest = max([largest, *(count for _, _, count, _ in entry.iter_unpack(table))])
        after = start + entries * entry.size
        offset = word.unpack_from(data, after)[0] if after + word.size <= len(data) else 0
    return largest, entries_in_all
