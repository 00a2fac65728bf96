"""GIF, still or animated: each image's rectangle of pixels flipped and moved to its mirrored
place on the screen, everything else (colour tables, transparency, disposal, timing, comments,
the file's extensions) kept byte for byte. The blocks are read without decoding anything: the
logical screen, the extensions, and each image's descriptor, local colour table and LZW-coded
pixels; only each image's pixels are decoded, one image at a time.

A viewer draws a GIF's images one over another, each a rectangle of the screen with its own
palette and transparency, and clears or restores it as its graphic control extension says. Each
rectangle flipped and moved to its mirrored place, everything else kept byte for byte, flips
every frame the viewer composites, exactly.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

from PIL import Image

from service.formats.base import (
    Format,
    NotAnImage,
    TimedWriter,
    TooCostly,
    TooLarge,
    Written,
    pillow_reading,
    pillow_writing,
)

EXTENSION, IMAGE, TRAILER = 0x21, 0x2C, 0x3B
GRAPHIC_CONTROL = 0xF9
# "GIF89a", then the logical screen: width, height, flags, background colour, aspect ratio.
HEADER = 13
COLOUR_TABLE, INTERLACED = 0x80, 0x40  # flags of the screen (the first) and of an image
LARGEST_SIDE = 0xFFFF
# A GIF has 2 or 3 blocks a frame (graphic control, image, maybe a comment) and a few more: this
# is over 6,000 frames, walked in about 20 ms; 25 MB of empty extensions would take seconds.
MOST_BLOCKS = 20_000
# And their sub-blocks: a 25 MB GIF's pixels in the usual 255-byte sub-blocks have 100,000. A
# comment of 3 million one-byte sub-blocks (6 MB) took Pillow 3.9 s to read, 12 million the deadline.
MOST_SUB_BLOCKS = 200_000
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

    def blocks(self, most_sub_blocks: int | None = None) -> Iterator[ImageBlock | memoryview]:
        """The blocks after the global colour table up to the trailer or the end of the data, as
        Pillow reads them: an ImageBlock for each image, each extension's bytes as they are;
        bytes where no block starts are skipped, and data after the trailer is not read. Views
        of the data, one at a time: a file of a million blocks holds no million objects.
        TooManySubBlocks once their sub-blocks (Pillow reads an extension's one Python loop turn
        each) pass `most_sub_blocks`."""
        data, view = self.data, memoryview(self.data)
        position, transparency = self._blocks_start, None
        counted = _Counted(most_sub_blocks)
        while position < len(data) and data[position] != TRAILER:
            label = data[position]
            if label == EXTENSION:
                end = _sub_blocks_end(data, position + 2, counted)
                if data[position + 1] == GRAPHIC_CONTROL and data[position + 2] >= 4 and data[position + 3] & 1:
                    transparency = data[position + 6]
                yield view[position:end]
            elif label == IMAGE:
                if position + 10 > len(data):
                    raise Damaged("an image descriptor is cut short")
                left, top, width, height, flags = struct.unpack_from("<HHHHB", data, position + 1)
                table_end = position + 10 + _table_size(flags)
                end = _sub_blocks_end(data, table_end + 1, counted)  # after the LZW minimum code size
                yield ImageBlock(left, top, width, height, flags, view[position + 10:table_end],
                                 view[table_end:end], transparency)
                transparency = None
            else:
                found = _BLOCK_START.search(data, position)
                end = found.start() if found else len(data)
            position = end


class TooManySubBlocks(Exception):
    """More sub-blocks than Gif.blocks was asked to read."""


class _Counted:
    """Sub-blocks read so far, against the most to read (None: no bound)."""

    def __init__(self, most: int | None):
        self.most, self.count = most, 0

    def one_more(self) -> None:
        self.count += 1
        if self.most is not None and self.count > self.most:
            raise TooManySubBlocks


def read(data: bytes) -> Gif:
    """The GIF in `data`; its blocks are read as they are walked (Gif.blocks)."""
    if len(data) < HEADER:
        raise Damaged("the header is cut short")
    return Gif(data)


def _table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & COLOUR_TABLE else 0


def _sub_blocks_end(data: bytes, position: int, counted: _Counted) -> int:
    """Where the sub-blocks from `position` end, past their zero-length terminator."""
    while True:
        if position >= len(data):
            raise Damaged("a block is cut short")
        size = data[position]
        counted.one_more()
        position += 1 + size
        if not size:
            return position


@dataclass
class Walked:
    """What the walk of a GIF's blocks found: its images and the screen they reach, and the first
    reason to refuse it met on the way (raised when the flip starts, after Pillow has read the
    header: a damaged header is Pillow's to name)."""

    frames: int = 0
    width: int = 0
    height: int = 0
    refused: Exception | None = None


class GifFormat(Format):
    name, media_type = "GIF", "image/gif"
    signatures = (b"GIF",)

    def walk(self, data, limits):
        """Every block once, before Pillow reads any: more than MOST_SUB_BLOCKS sub-blocks are
        refused at once; too many blocks or frames, or a block cut short, when the flip starts."""
        try:
            source = read(data)
        except Damaged as exc:
            return Walked(refused=exc)
        walked = Walked(0, *source.screen)
        try:
            for count, block in enumerate(source.blocks(MOST_SUB_BLOCKS), 1):
                if count > MOST_BLOCKS and walked.refused is None:
                    walked.refused = TooCostly(
                        f"the GIF has more than {MOST_BLOCKS:,} blocks, the most a picture may have (an animation "
                        "has 2 or 3 a frame): each costs time before any pixel")
                if isinstance(block, ImageBlock):
                    walked.frames += 1
                    if walked.frames > limits.max_frames and walked.refused is None:
                        walked.refused = TooLarge(f"the animation has more than {limits.max_frames} frames")
                    # Beyond the logical screen, an image widens it, as Pillow reads it: the flip is within it.
                    walked.width = max(walked.width, block.left + block.width)
                    walked.height = max(walked.height, block.top + block.height)
        except TooManySubBlocks:
            raise TooCostly(f"the GIF has more than {MOST_SUB_BLOCKS:,} sub-blocks, the most a picture may have (a "
                            "25 MB GIF's pixels have 100,000): each costs time before any pixel") from None
        except Damaged as exc:
            walked.refused = walked.refused or exc
        return walked

    def own_flip(self, im, data, walk, operation, flip, limits, spans, deadline, lossless):
        """The GIF with each image's rectangle of pixels flipped and moved to its mirrored place on
        the screen, its colour table, transparency, disposal and timing, and the file's
        extensions, kept byte for byte: every frame a viewer composites is the source's, flipped.
        The orientation is not applied (`flip`, not `operation`): viewers ignore it in a GIF.

        Pillow's writer could not do that: it takes composited frames, quantises each to one
        palette (a frame composited from several has more than 256 colours) and disposes of them
        its own way. One image's pixels are held at a time, decoded and flipped; the frame and
        total pixel limits count each frame's whole screen, as for the other animations, checked
        before any decoding."""
        if isinstance(walk.refused, Damaged):
            raise NotAnImage(f"the GIF data is damaged or truncated: {walk.refused}")
        if walk.refused:
            raise walk.refused
        width, height, frames = walk.width, walk.height, walk.frames
        if not frames:
            raise NotAnImage("the GIF has no image")
        if max(width, height) > LARGEST_SIDE:
            raise TooLarge(f"the GIF's images reach {width}x{height}, beyond the largest screen a GIF can have "
                           f"({LARGEST_SIDE:,} a side)")
        if self.count_pixels((width, height), im.mode, limits, "GIF") * frames > limits.max_total_pixels:
            raise TooLarge(f"the animation's frames add up to more than {limits.max_total_pixels:,} pixels")
        out = TimedWriter(deadline, limits.max_answer_bytes)
        source = read(data)
        out.write(source.header_for(width, height))
        try:
            for block in source.blocks():
                deadline.check()
                # Extensions are written as they are; a plain text one's grid, which no viewer draws, is not moved.
                out.write(_flipped(im, block, flip, (width, height), spans).block()
                          if isinstance(block, ImageBlock) else block)
        except Damaged as exc:
            raise NotAnImage(f"the GIF data is damaged or truncated: {exc}") from exc
        out.write(bytes([TRAILER]))
        return Written(out.getvalue(), width, height, frames)


def _flipped(im, image: ImageBlock, operation, screen, spans) -> ImageBlock:
    """The image with its pixels flipped, at its mirrored place on the screen; the colour indices
    are decoded and encoded by Pillow, unchanged, and its colour table is kept."""
    if operation == Image.Transpose.FLIP_LEFT_RIGHT:
        moved = replace(image, left=screen[0] - image.left - image.width)
    elif operation == Image.Transpose.FLIP_TOP_BOTTOM:
        moved = replace(image, top=screen[1] - image.top - image.height)
    else:
        raise ValueError(f"a GIF is only flipped, not turned: {operation!r}")
    if not image.width or not image.height:
        return moved
    with pillow_reading(im), Image.open(io.BytesIO(image.alone()), formats=["GIF"]) as alone:
        with spans.timing("decode"):
            alone.load()
        with spans.timing("flip"):
            flipped = alone.transpose(operation)
    flipped.info = {}  # the transparency and timing stay in the source's own extension
    written = io.BytesIO()
    with pillow_writing(im), spans.timing("encode"):
        flipped.save(written, "GIF", optimize=False, interlace=bool(image.flags & INTERLACED))
    (encoded,) = [block for block in read(written.getvalue()).blocks() if isinstance(block, ImageBlock)]
    # Pillow does not interlace an image under 16 pixels wide or high.
    flags = image.flags & ~INTERLACED | encoded.flags & INTERLACED
    return replace(moved, flags=flags, pixels=encoded.pixels)


FORMAT = GifFormat()
