"""PNG: decoded and written again by Pillow, losslessly. A flip keeps the source's colour space
(gAMA, cHRM, sRGB, cICP, sBIT, the ICC profile), its text chunks where they were (before or
after the pixels), its EXIF (eXIf, or ImageMagick's hex text of one) less the orientation, and
its transparency. 16-bit colour is written at 8 bits (Flipped.dropped names it).

The chunks are walked once, before Pillow reads them: their counts are bounded (each costs time
before any pixel), and the walk keeps where the chunks the flip writes back are."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from dataclasses import dataclass, field

from PIL import PngImagePlugin

from service.formats import metadata
from service.formats.base import Format, TooCostly, eight_bit_mode

SIGNATURE = b"\x89PNG\r\n\x1a\n"
END = b"\0\0\0\0IEND\xaeB`\x82"
# Chunks a flip keeps as they are: colour space (Pillow's writer leaves out sRGB beside an ICC
# profile) and text. Text keywords under which ImageMagick keeps an EXIF, and the XMP's.
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
KEPT_CHUNKS = frozenset({b"cHRM", b"cICP", b"gAMA", b"sRGB", b"sBIT"}) | TEXT_CHUNKS
RAW_EXIF = b"Raw profile type exif"  # the text in which Pillow's getexif() reads an EXIF
EXIF_KEYWORDS = frozenset({RAW_EXIF, b"Raw profile type APP1"})
XMP_KEYWORD = b"XML:com.adobe.xmp"
# Before its pixels a PNG has a handful of chunks (header, palette, colour space, text): 24 MB of
# empty ones take Pillow past the 10 s deadline to read; 20,000 are walked in about 20 ms.
MOST_CHUNKS = 20_000
# In all, its pixels' IDAT chunks too: a few thousand in 25 MB (libpng writes 8 KiB each, Pillow
# 64 KiB). 2 million empty ones (24 MB) took Pillow 3.2 s to decode; 100,000 take 0.16 s.
MOST_ALL_CHUNKS = 100_000
# Deflate's best: 258 bytes from one match, whose length and distance codes take a bit each.
DEFLATE_MOST_RATIO = 1032
# Samples a pixel by PNG colour type: grey, RGB, palette, grey and alpha, RGBA.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# The writer's parameter for the text chunks after the pixels, which Png.save puts there itself.
TEXT_AFTER_PIXELS = "text_after_pixels"


@dataclass
class Chunks:
    """What the walk found: the header's bit depth and the fewest bytes its pixels can be; the
    chunks the flip writes back, each EXIF, and the texts after the pixels that may hold one (kind,
    where its data starts, its length, whether after the pixels)."""

    sixteen_bits: bool
    least_bytes: int
    kept: list[tuple[bytes, int, int, bool]] = field(default_factory=list)
    exifs: list[tuple[int, int]] = field(default_factory=list)
    exif_texts: list[tuple[bytes, int, int]] = field(default_factory=list)


class Png(Format):
    name, media_type = "PNG", "image/png"
    media_type_aliases = ("image/x-png",)
    signatures = (SIGNATURE,)

    def walk(self, data, limits):
        found = Chunks(sixteen_bits=data[24:25] == b"\x10", least_bytes=_least_bytes(data))
        before_pixels = in_all = 0
        for kind, start, length, after_pixels in _chunks(data):
            in_all += 1
            before_pixels += not after_pixels
            if before_pixels > MOST_CHUNKS:
                raise TooCostly(f"the PNG has more than {MOST_CHUNKS:,} chunks before its pixels, the most a picture "
                                "may have (most have a handful): each costs time before any pixel")
            if in_all > MOST_ALL_CHUNKS:
                raise TooCostly(f"the PNG has more than {MOST_ALL_CHUNKS:,} chunks, the most a picture may have (most "
                                "have a few thousand at most): each costs time to read")
            if kind == b"eXIf":
                found.exifs.append((start, length))
            elif after_pixels and kind in TEXT_CHUNKS and data.startswith(RAW_EXIF + b"\0", start):
                found.exif_texts.append((kind, start, length))
            if kind in (TEXT_CHUNKS if after_pixels else KEPT_CHUNKS):
                found.kept.append((kind, start, length, after_pixels))
        return found

    def exifs(self, im, data, walk):
        """Each eXIf chunk and ImageMagick's hex text of one, before the pixels or after them
        (where Pillow reads them once it has decoded the pixels)."""
        exifs = [im.info["exif"]] if im.info.get("exif") else []
        read = im.info.get(RAW_EXIF.decode())  # Pillow's reading of the text before the pixels
        texts = [read] if isinstance(read, str) else []
        exifs += [data[start : start + length] for start, length in walk.exifs]
        texts += [_text(kind, data[start : start + length]) for kind, start, length in walk.exif_texts]
        for text in texts:
            with contextlib.suppress(ValueError):  # not hex: Pillow fails on it, and reads nothing
                exifs.append(bytes.fromhex("".join(text.split("\n")[3:])))
        return exifs

    def least_bytes(self, data, walk):
        return walk.least_bytes

    def narrowed_to_8_bits(self, frame):
        # From the rawmode ("RGB;16B"): the tile that tells it is emptied once the frame is decoded.
        sixteen_bits = any(";16" in tile.args for tile in frame.tile)
        return sixteen_bits and eight_bit_mode(frame.mode)

    def save_params(self, im, data, params, walk, turned, later_page):
        params = {**params, **metadata.exif_params(metadata.read(im), turned)}
        sixteen_bits = walk.sixteen_bits
        before_pixels, after_pixels = _kept(data, walk, sixteen_bits)
        params.update(pnginfo=before_pixels, **{TEXT_AFTER_PIXELS: after_pixels})
        if "transparency" in im.info:
            key = im.info["transparency"]
            if sixteen_bits and isinstance(key, tuple):  # a 16-bit colour key, for 8-bit colours
                key = tuple(value >> 8 for value in key)
            params["transparency"] = key
        return params

    def save(self, frame, out, params):
        after_pixels = params.pop(TEXT_AFTER_PIXELS, b"")
        frame.save(out, self.name, **params)
        if after_pixels:  # before the IEND chunk that ends what the writer wrote
            out.seek(-len(END), io.SEEK_END)
            out.write(after_pixels + END)


def _least_bytes(data: bytes) -> int:
    """The fewest bytes the pixels its header (IHDR) gives can be compressed to; 0 without one."""
    if data[12:16] != b"IHDR":
        return 0
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bits = data[24] * CHANNELS.get(data[25], 1)
    return width * height * bits // 8 // DEFLATE_MOST_RATIO


def _kept(data: bytes, walk: Chunks, sixteen_bits: bool) -> tuple[PngImagePlugin.PngInfo, bytes]:
    """The source's colour space and text chunks before its pixels, for the writer (which writes
    them when given, but its reader keeps only their values); and its text chunks after them, as
    bytes to follow the written pixels (the writer puts text before them). Each as it is, but the
    XMP without its orientation, which the flip applies; not the EXIF that ImageMagick keeps in a
    text chunk (the EXIF is written back on its own); significant bits for 16 would be over 8."""
    before_pixels, after_pixels = PngImagePlugin.PngInfo(), []
    for kind, start, length, after in walk.kept:
        if kind == b"sBIT" and sixteen_bits:
            continue
        body = data[start : start + length]
        keyword = body.split(b"\0", 1)[0]
        if keyword in EXIF_KEYWORDS:
            continue
        if kind == b"iTXt" and keyword == XMP_KEYWORD:
            if body[len(keyword) + 1 : len(keyword) + 2] != b"\0":  # compressed (or damaged): no edit in place
                continue
            body = metadata.xmp_without_orientation(body)
        if after:
            after_pixels.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        else:
            before_pixels.add(kind, body)
    return before_pixels, b"".join(after_pixels)


def _chunks(data: bytes):
    """(type, where its data starts, its length, whether it follows the first IDAT) of each chunk
    of the PNG, up to its IEND or the end of what was sent."""
    at, after_pixels = len(SIGNATURE), False
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        after_pixels = after_pixels or kind == b"IDAT"
        yield kind, at + 8, length, after_pixels
        if kind == b"IEND":
            return
        at += 12 + length


def _text(kind: bytes, body: bytes) -> str:
    """A text chunk's text, decompressed as Pillow decompresses it; "" when it cannot be read."""
    _, _, rest = body.partition(b"\0")
    try:
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":
            return PngImagePlugin._safe_zlib_decompress(rest[1:]).decode("latin-1")
        compressed, rest = rest[:1] == b"\1", rest[2:]  # the flag, the method
        text = rest.split(b"\0", 2)[-1]  # after the language and the translated keyword
        return (PngImagePlugin._safe_zlib_decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, ValueError):
        return ""


FORMAT = Png()
