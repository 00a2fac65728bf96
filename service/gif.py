"""A GIF's blocks, read without decoding anything: the logical screen, the extensions, and each
image's descriptor, local colour table and LZW-coded pixels.

A viewer draws a GIF's images one over another, each a rectangle of the screen with its own
palette and transparency, and clears or restores it as its graphic control extension says. Each
rectangle flipped and moved to its mirrored place, everything else kept byte for byte, flips
every frame the viewer composites, exactly: service.imaging decodes only the rectangles' pixels.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

EXTENSION, IMAGE, TRAILER = 0x21, 0x2C, 0x3B
GRAPHIC_CONTROL = 0xF9
# "GIF89a", then the logical screen: width, height, flags, background colour, aspect ratio.
HEADER = 13
COLOUR_TABLE, INTERLACED = 0x80, 0x40  # flags of the screen (the first) and of an image
LARGEST_SIDE = 0xFFFF
# Where a block may start: Pillow skips any other byte there.
_BLOCK_START = re.compile(rb"[!,;]")


class Damaged(Exception):
    """A block cut short by the end of the data."""


@dataclass(frozen=True)
class ImageBlock:
    """One image: its rectangle on the screen, its descriptor's flags, its local colour table
    (empty for none) and its LZW data (the minimum code size, the sub-blocks, the terminator)."""

    left: int
    top: int
    width: int
    height: int
    flags: int
    colour_table: bytes | memoryview
    pixels: bytes | memoryview
    # The index that the graphic control extension before it makes transparent.
    transparency: int | None

    def block(self) -> bytes:
        return (b"," + struct.pack("<HHHHB", self.left, self.top, self.width, self.height, self.flags)
                + self.colour_table + self.pixels)

    def alone(self) -> bytes:
        """A GIF of this image alone, on a screen its size, with its transparent index but no
        colour table: decoded, the image's colour indices (Pillow reads it in mode L; LZW data
        that ends short of the image's pixels is refused as truncated)."""
        control = b"" if self.transparency is None else b"!\xf9\x04\x01\x00\x00" + bytes([self.transparency, 0])
        return (b"GIF89a" + struct.pack("<HHBBB", self.width, self.height, 0, 0, 0) + control
                + b"," + struct.pack("<HHHHB", 0, 0, self.width, self.height, self.flags & INTERLACED)
                + self.pixels + bytes([TRAILER]))


@dataclass(frozen=True)
class Gif:
    """A GIF's bytes, its header read."""

    data: bytes

    @property
    def screen(self) -> tuple[int, int]:
        return struct.unpack_from("<HH", self.data, 6)

    def header_for(self, width: int, height: int) -> bytes:
        """The header and global colour table, with the logical screen made width x height."""
        return self.data[:6] + struct.pack("<HH", width, height) + self.data[10:self._blocks_start]

    @property
    def _blocks_start(self) -> int:
        return HEADER + _table_size(self.data[10])

    def blocks(self) -> Iterator[ImageBlock | memoryview]:
        """The blocks after the global colour table up to the trailer or the end of the data, as
        Pillow reads them: an ImageBlock for each image, each extension's bytes as they are;
        bytes where no block starts are skipped, and data after the trailer is not read. Views
        of the data, one at a time: a file of a million blocks holds no million objects."""
        data, view = self.data, memoryview(self.data)
        position, transparency = self._blocks_start, None
        while position < len(data) and data[position] != TRAILER:
            label = data[position]
            if label == EXTENSION:
                end = _sub_blocks_end(data, position + 2)
                if data[position + 1] == GRAPHIC_CONTROL and data[position + 2] >= 4 and data[position + 3] & 1:
                    transparency = data[position + 6]
                yield view[position:end]
            elif label == IMAGE:
                if position + 10 > len(data):
                    raise Damaged("an image descriptor is cut short")
                left, top, width, height, flags = struct.unpack_from("<HHHHB", data, position + 1)
                table_end = position + 10 + _table_size(flags)
                end = _sub_blocks_end(data, table_end + 1)  # after the LZW minimum code size
                yield ImageBlock(left, top, width, height, flags, view[position + 10:table_end],
                                 view[table_end:end], transparency)
                transparency = None
            else:
                found = _BLOCK_START.search(data, position)
                end = found.start() if found else len(data)
            position = end


def sub_blocks(data: bytes, stop_after: int) -> int:
    """How many sub-blocks the GIF's extensions and images have in all (Pillow reads an
    extension's one Python loop turn each); counting stops once it passes `stop_after`, or where a
    block is cut short."""
    counted = 0
    position = HEADER + _table_size(data[10]) if len(data) >= HEADER else len(data)
    while position < len(data) and data[position] != TRAILER and counted <= stop_after:
        if data[position] == EXTENSION:
            position += 2  # the introducer and the label
        elif data[position] == IMAGE and position + 10 <= len(data):
            position += 10 + _table_size(data[position + 9]) + 1  # the descriptor, its colours, the LZW code size
        elif data[position] == IMAGE:
            break
        else:
            found = _BLOCK_START.search(data, position)
            position = found.start() if found else len(data)
            continue
        while position < len(data) and counted <= stop_after:
            size = data[position]
            position += 1 + size
            counted += 1
            if not size:
                break
    return counted


def read(data: bytes) -> Gif:
    """The GIF in `data`; its blocks are read as they are walked (Gif.blocks)."""
    if len(data) < HEADER:
        raise Damaged("the header is cut short")
    return Gif(data)


def _table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & COLOUR_TABLE else 0


def _sub_blocks_end(data: bytes, position: int) -> int:
    """Where the sub-blocks from `position` end, past their zero-length terminator."""
    while True:
        if position >= len(data):
            raise Damaged("a block is cut short")
        size = data[position]
        position += 1 + size
        if not size:
            return position
