"""A generated corpus of malformed requests for POST /flip: each is something a careless or
hostile client sends. Each must get a JSON 4xx, never a 5xx, a hang or a dead replica, except
where the damage leaves a picture that still decodes (flipped bits in pixel data): that one
may be flipped like any other."""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field

from PIL import Image

from service.config import Settings
from service.imaging import MEDIA_TYPES
from tests.pictures import encode, gif_declaring, photo, picture, png_chunk, png_declaring

FORMATS = tuple(MEDIA_TYPES)
MEDIA = MEDIA_TYPES
LIMIT = Settings.from_env({}).max_bytes  # the default that compose.yaml ships


@dataclass
class BadRequest:
    name: str
    body: bytes = b""
    content_type: str | None = "image/jpeg"
    files: list[tuple[str, str, bytes, str]] = field(default_factory=list)  # field, filename, data, type
    form: dict[str, str] = field(default_factory=dict)
    # Only damage inside pixel data may leave a picture that still decodes (and is flipped).
    may_decode: bool = False


def _valid(fmt: str) -> bytes:
    return encode(photo((160, 120)) if fmt in ("JPEG", "WEBP") else picture("RGB", (160, 120)), fmt)


def _flip_bits(data: bytes, positions: list[int]) -> bytes:
    damaged = bytearray(data)
    for position in positions:
        damaged[position % len(damaged)] ^= 0xFF
    return bytes(damaged)


def _tiff_declaring(width: int, height: int) -> bytes:
    """A small uncompressed TIFF whose ImageWidth and ImageLength tags claim width x height."""
    data = bytearray(encode(Image.new("L", (8, 8)), "TIFF"))
    endian = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(endian + "I", data[4:8])[0]
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    for index in range(count):
        entry = ifd + 2 + 12 * index
        tag, kind = struct.unpack(endian + "HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            packed = struct.pack(endian + ("H" if kind == 3 else "I"), value)
            data[entry + 8 : entry + 8 + len(packed)] = packed
    return bytes(data)


def _webp_declaring(width: int, height: int) -> bytes:
    """A WebP with an extended (VP8X) header whose canvas claims width x height (max 16384^2)."""
    exif = Image.Exif()
    exif[0x010F] = "flipfleet"  # any metadata makes the encoder write the extended header
    data = bytearray(encode(Image.new("RGBA", (8, 8)), "WEBP", lossless=True, exif=exif.tobytes()))
    at = data.index(b"VP8X")
    # canvas width-1 and height-1, 24 bits each, after 4 flag bytes
    data[at + 12 : at + 15] = (width - 1).to_bytes(3, "little")
    data[at + 15 : at + 18] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def _png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black pixels: a few hundred KB that inflate to W*H bytes."""
    row = b"\0" * (width + 1)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def _gif_with_frames(frames: int, size: tuple[int, int] = (1, 1)) -> bytes:
    # Alternating black and white: consecutive equal frames would be merged into one.
    images = [Image.new("L", size, 255 * (i % 2)) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def malformed_requests(seed: int = 2018) -> list[BadRequest]:
    rng = random.Random(seed)
    corpus: list[BadRequest] = []
    add = corpus.append

    for content_type in ("image/jpeg", "image/png", "application/octet-stream", "image/*"):
        add(BadRequest(f"empty body as {content_type}", b"", content_type))
    for size in (1, 7, 100, 4096, 65536, 1_000_000):
        for content_type in ("image/jpeg", "application/octet-stream", None):
            add(BadRequest(f"{size} random bytes as {content_type}", rng.randbytes(size), content_type))

    for fmt in FORMATS:
        valid = _valid(fmt)
        for fraction in (0.01, 0.02, 0.05, 0.1, 0.25, 0.4, 0.5, 0.75, 0.9, 0.95):
            add(BadRequest(f"{fmt} truncated at {fraction:.0%}", valid[: int(len(valid) * fraction)], MEDIA[fmt]))
        add(BadRequest(f"{fmt} magic only", valid[:8], MEDIA[fmt]))
        for trial in range(8):
            in_header = [rng.randrange(2, 40) for _ in range(3)]
            add(BadRequest(f"{fmt} flipped bits in header #{trial}", _flip_bits(valid, in_header), MEDIA[fmt],
                           may_decode=True))
        for trial in range(5):
            anywhere = [rng.randrange(len(valid)) for _ in range(40)]
            add(BadRequest(f"{fmt} flipped bits throughout #{trial}", _flip_bits(valid, anywhere), MEDIA[fmt],
                           may_decode=True))

    for width, height in ((100_000, 100_000), (65_535, 65_535), (8_000, 8_000), (2**31 - 1, 2)):
        add(BadRequest(f"PNG header claiming {width}x{height}", png_declaring(width, height), "image/png"))
    for width, height in ((65_535, 65_535), (10_000, 10_000)):
        add(BadRequest(f"GIF claiming {width}x{height}", gif_declaring(width, height), "image/gif"))
    for width, height in ((4_000_000_000, 4), (100_000, 100_000), (60_000, 1_000)):
        add(BadRequest(f"TIFF claiming {width}x{height}", _tiff_declaring(width, height), "image/tiff"))
    for width, height in ((16_384, 16_384), (16_384, 8_000)):
        add(BadRequest(f"WebP canvas claiming {width}x{height}", _webp_declaring(width, height), "image/webp"))
    add(BadRequest("PNG bomb: 60000x1000 real zeros", _png_bomb(60_000, 1_000), "image/png"))
    add(BadRequest("PNG bomb: 20000x20000 real zeros", _png_bomb(20_000, 20_000), "image/png"))

    for frames in (101, 1_000, 5_000):
        add(BadRequest(f"GIF with {frames} frames", _gif_with_frames(frames), "image/gif"))
    # Few frames, each allowed, but together over FLIP_MAX_TOTAL_PIXELS: a memory bomb.
    add(BadRequest("GIF with 60 frames of 1000x1000", _gif_with_frames(60, (1000, 1000)), "image/gif"))

    png = _valid("PNG")
    for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded",
                         "text/html; charset=utf-8", "video/mp4", "application/pdf"):
        add(BadRequest(f"a PNG sent as {content_type}", png, content_type))
    add(BadRequest("SVG as image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
                   "image/svg+xml"))
    add(BadRequest("no Content-Type, random bytes", rng.randbytes(5000), None))
    add(BadRequest("ICO (another format)", encode(picture("RGB"), "ICO"), "image/x-icon"))
    add(BadRequest("PPM (another format)", encode(picture("RGB"), "PPM"), "image/x-portable-pixmap"))

    add(BadRequest("multipart with no file", content_type=None, form={"note": "no picture here"}))
    add(BadRequest("multipart with the file under another name", content_type=None,
                   files=[("photo", "photo.png", png, "image/png")]))
    add(BadRequest("multipart with two files", content_type=None,
                   files=[("image", "a.png", png, "image/png"), ("file", "b.png", png, "image/png")]))
    add(BadRequest("multipart with an empty file", content_type=None, files=[("image", "e.png", b"", "image/png")]))
    add(BadRequest("multipart declared, body not multipart", b"--nope\r\n\r\n", "multipart/form-data; boundary=x"))
    add(BadRequest("multipart without a boundary", b"abc", "multipart/form-data"))
    impostors = {
        ("notes.jpg", "JPEG"): b"Dear diary, today I flipped.",
        ("archive.png", "PNG"): b"PK\x03\x04" + rng.randbytes(500),
        ("doc.gif", "GIF"): b"%PDF-1.7\n" + rng.randbytes(500),
        ("script.webp", "WEBP"): b"#!/bin/sh\nrm -rf /\n",
        ("page.tiff", "TIFF"): b"<html><body>hello</body></html>",
        ("elf.bmp", "BMP"): b"\x7fELF" + rng.randbytes(200),
    }
    for (filename, fmt), data in impostors.items():
        add(BadRequest(f"non-image file named {filename}", content_type=None,
                       files=[("image", filename, data, MEDIA[fmt])]))
        add(BadRequest(f"non-image body sent as {MEDIA[fmt]}", data, MEDIA[fmt]))

    add(BadRequest("body over the limit", b"\0" * (LIMIT + 1), "image/jpeg"))
    add(BadRequest("body far over the limit", b"\0" * (2 * LIMIT), "image/png"))
    add(BadRequest("multipart over the limit", content_type=None,
                   files=[("image", "big.jpg", b"\0" * (LIMIT + 10), "image/jpeg")]))
    return corpus
