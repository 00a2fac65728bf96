"""A JPEG's markers, read without decoding anything: its header segments, its sample precision,
and how many scans it has.

A progressive JPEG may hold any number of scans, and a decoder walks every block of the picture
for each: thousands of tiny scans make a small file cost minutes. Counting them is cheap: the walk
through a scan's entropy-coded data is C (jpeg_scan.c, built by scripts/build-native.sh) where it
is built, as in the web image, and a regex with the same answers where it is not.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path
from typing import NamedTuple

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# Markers with no length after them: TEM and the restart markers.
STANDALONE = {0x01, *range(0xD0, 0xD8)}
# The start-of-frame markers: DHT, JPG and DAC share their range.
START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Those of Huffman-coded DCT pictures: baseline, extended, progressive.
SOF_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2})
# The end of a scan's entropy-coded data: a 0xFF that is not stuffing (0x00), a restart marker or fill.
_AFTER_SCAN = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
# The next marker after bytes where none belongs, found as libjpeg finds it: it skips them with a
# warning ("extraneous bytes before marker") and reads on, so the count must too.
_NEXT_MARKER = re.compile(rb"\xff+(?=[^\x00\xff])")
NATIVE_LIBRARY = Path(__file__).with_name("jpeg_scan.so")


def load_native_scan_end(library: Path = NATIVE_LIBRARY):
    """jpeg_scan.c's flipfleet_scan_end from `library`, or None when it is not built."""
    try:
        function = ctypes.CDLL(str(library)).flipfleet_scan_end
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t), ctypes.c_long
    return function


_native_scan_end = load_native_scan_end()


def scan_end(data: bytes, start: int) -> int | None:
    """Where the entropy-coded data from `start` ends: its first 0xFF that is not stuffing (0x00),
    a restart marker or fill; None when no marker follows."""
    if _native_scan_end is not None and type(data) is bytes and 0 <= start:
        found = _native_scan_end(data, start, len(data))
        return None if found < 0 else found
    after = _AFTER_SCAN.search(data, start)
    return None if after is None else after.start()


def segments(data: bytes):
    """(marker, start, end) of each segment of the main picture, from SOI up to and including the
    first SOS's header (its entropy-coded data follows `end`); nothing if `data` is not a JPEG."""
    for marker, start, end in _walk(data, skip_stray_bytes=False):
        yield marker, start, end
        if marker == SOS:
            return


def precision(data: bytes) -> int | None:
    """Bits a sample of the main picture, from its start of frame; None without one."""
    for marker, start, end in segments(data):
        if marker in START_OF_FRAME:
            return data[start + 4] if start + 4 < min(end, len(data)) else None
    return None


def counts(data: bytes, most_scans: int, most_segments: int) -> tuple[int, int]:
    """How many scans (SOS segments) the main picture has up to its EOI, and how many other
    segments beyond two a scan (a progressive JPEG may define tables before each). Counting stops
    once either passes its bound, so a file of a million segments costs no more than the bound.

    Scans: a decoder walks every block of the picture for each. Other segments: libjpeg keeps the
    APPn and COM segments it copies in a list it walks to the end for each new one, so a file of
    many costs their square in one call that cannot be interrupted."""
    scans = segments = 0
    for marker, _, _ in _walk(data, skip_stray_bytes=True):
        if marker == SOS:
            scans += 1
        else:
            segments += 1
        if scans > most_scans or segments - 2 * scans > most_segments:
            break
    return scans, max(segments - 2 * scans, 0)


def scans(data: bytes, stop_after: int) -> int:
    """How many scans the main picture has (counts), up to `stop_after` + 1."""
    return counts(data, stop_after, sys.maxsize)[0]


class Frame(NamedTuple):
    """What the main picture's frame header tells, read in one walk of its header segments."""

    # How many samples (of all components) the frame holds a pixel: 1 for grey, 1.5 for 4:2:0
    # colour, 3 for 4:4:4, 4 for CMYK at full resolution; 0 when no frame is found.
    samples: float
    # The fewest bytes a Huffman-coded picture of this frame's size can be: every 8x8 block of
    # every component costs at least one bit (its DC code) after the first scan's header. 0 when
    # the frame is not Huffman-coded or not found (arithmetic coding may spend less than a bit).
    least_bytes: int


def frame(data: bytes) -> Frame:
    first = huffman = scan_start = None
    for marker, start, end in segments(data):
        if marker in START_OF_FRAME and first is None:
            first = data[start + 4 : end]
        if marker in SOF_HUFFMAN and huffman is None:
            huffman = data[start + 4 : end]
        elif marker == SOS:
            scan_start = end
    return Frame(_samples(first), _least_bytes(huffman, scan_start))


def least_bytes(data: bytes) -> int:
    return frame(data).least_bytes


def samples_per_pixel(data: bytes) -> float:
    return frame(data).samples


def _least_bytes(header: bytes | None, scan_start: int | None) -> int:
    if header is None or scan_start is None or len(header) < 6:
        return 0
    height, width = int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
    factors, most_h, most_v = _sampling(header)
    if not most_h or not most_v:
        return 0
    blocks = sum(_ceil(_ceil(width * h, most_h), 8) * _ceil(_ceil(height * v, most_v), 8) for h, v in factors)
    return scan_start + _ceil(blocks, 8)


def _samples(header: bytes | None) -> float:
    if header is None or len(header) < 6:
        return 0
    factors, most_h, most_v = _sampling(header)
    return sum(h * v for h, v in factors) / (most_h * most_v) if most_h and most_v else 0


def _sampling(frame: bytes) -> tuple[list[tuple[int, int]], int, int]:
    """A frame header's components' (horizontal, vertical) sampling factors (the high and low
    nibble of each one's second byte), and the largest of each."""
    factors = [(byte >> 4, byte & 15) for byte in frame[7 : 6 + 3 * frame[5] : 3]]
    return factors, max((h for h, _ in factors), default=0), max((v for _, v in factors), default=0)


def _ceil(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _walk(data: bytes, skip_stray_bytes: bool):
    """(marker, start, end) of each segment; where no marker is where one must be, the walk ends
    (the header of a damaged file), or with `skip_stray_bytes` reads on from the next marker."""
    if data[:2] != b"\xff\xd8":
        return
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF or data[position + 1] == 0x00:
            if not skip_stray_bytes:
                return
            found = _NEXT_MARKER.search(data, position + 1)
            if found is None:
                return
            position = found.end() - 1
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in STANDALONE:
            position += 2
            continue
        if marker == EOI:
            return
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        yield marker, position, end
        if marker == SOS:
            end = scan_end(data, end)
            if end is None:
                return
        position = end
