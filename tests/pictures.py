"""Pictures made in memory for the tests: every one asymmetric, so a flip always shows."""

from __future__ import annotations

import io
import math
import random
import struct
import zlib

from PIL import Image, ImageChops, ImageStat

from service.formats import jpeg_markers as jpeg

SIZE = (48, 32)


def picture(mode: str, size: tuple[int, int] = SIZE, seed: int = 1) -> Image.Image:
    """Random pixels in `mode`: no row or column mirrors another."""
    rng = random.Random(seed)
    if mode == "P":
        im = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
        im = im.point(lambda v: v % 16).convert("P")
        im.putpalette([c for i in range(16) for c in (i * 16, 255 - i * 16, (i * 97) % 256)])
        im.info["transparency"] = 3
        return im
    if mode == "I;16":
        raw = rng.randbytes(size[0] * size[1] * 2)
        return Image.frombytes("I;16", size, raw)
    if mode == "1":
        return Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("1")
    raw = rng.randbytes(size[0] * size[1] * Image.getmodebands(mode))
    return Image.frombytes(mode, size, raw)


def photo(size: tuple[int, int] = (320, 240), mode: str = "RGB") -> Image.Image:
    """Smooth, photo-like content for lossy formats, where noise would measure the codec."""
    w, h = size
    im = Image.new("RGB", size)
    im.putdata(
        [
            (
                int(127 + 120 * math.sin(x / 17 + y / 29)),
                int(x * 255 / w),
                int(127 + 120 * math.cos(y / 11)),
            )
            for y in range(h)
            for x in range(w)
        ]
    )
    return im.convert(mode)


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def animation(fmt: str, frames: int = 3, size: tuple[int, int] = SIZE, **params) -> tuple[bytes, list]:
    """An animation whose frames differ, with a distinct duration each; also its frames."""
    images = [picture("RGBA" if fmt == "WEBP" else "P", size, seed=i + 10) for i in range(frames)]
    durations = [100 * (i + 1) for i in range(frames)]
    data = encode(
        images[0], fmt, save_all=True, append_images=images[1:], duration=durations, loop=3, **params
    )
    return data, durations


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two same-sized pictures."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    mse = sum(rms * rms for rms in ImageStat.Stat(diff).rms) / 3
    return math.inf if mse == 0 else 20 * math.log10(255 / math.sqrt(mse))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: its length, type, data and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's header."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims width x height pixels over the data of 96x64."""
    data = bytearray(encode(picture("RGB", (96, 64)), "JPEG"))
    frame = data.index(b"\xff\xc0")  # marker, length, precision, then height and width
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# (bands, PNG colour type) of each mode a 16-bit PNG can hold.
PNG_COLOUR_TYPES = {"L": (1, 0), "RGB": (3, 2), "LA": (2, 4), "RGBA": (4, 6)}


def png_16_bits(mode: str, size: tuple[int, int] = SIZE, seed: int = 1) -> bytes:
    """A PNG of 16 bits a sample, random ones, in one of PNG_COLOUR_TYPES' modes: Pillow reads
    such PNGs but writes only grey at 16 bits."""
    width, height = size
    bands, colour_type = PNG_COLOUR_TYPES[mode]
    rng = random.Random(seed)
    rows = b"".join(b"\0" + rng.randbytes(width * bands * 2) for _ in range(height))  # filter 0: none

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def jpeg_of_precision(bits: int) -> bytes:
    """An 8-bit JPEG whose start of frame claims `bits` bits a sample, as a 12- or 16-bit one's does."""
    data = bytearray(encode(photo((64, 48)), "JPEG"))
    start = next(start for marker, start, _ in jpeg.segments(data) if marker in jpeg.START_OF_FRAME)
    data[start + 4] = bits
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen and frame claim width x height pixels."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b",")  # the image descriptor: left, top, width, height
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_padded(chunks: int) -> bytes:
    """A 16x16 lossless WebP with `chunks` empty unknown chunks before its bitstream (allowed by
    the format, skipped by decoders)."""
    bitstream = encode(picture("RGB", (16, 16)), "WEBP", lossless=True)[12:]
    extended = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (15).to_bytes(3, "little") * 2
    body = b"WEBP" + extended + b"JUNK\0\0\0\0" * chunks + bitstream
    return b"RIFF" + struct.pack("<I", len(body)) + body


def moving_square_gif(disposal: int) -> bytes:
    """An animated sticker: a 10x10 opaque square that moves over a transparent background, each
    frame disposed of with `disposal` (2: cleared to the background, 3: restored to what was
    before it), as Pillow writes it."""
    frames = []
    for index in range(3):
        frame = Image.new("P", (40, 30), 0)
        frame.putpalette([value % 256 for value in range(768)])
        frame.paste(index + 1, (index * 5, 0, index * 5 + 10, 10))
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0,
                  transparency=0, disposal=disposal)


def local_palettes_gif() -> bytes:
    """Two frames of 64x32, each image with its own 256-colour table: a whole screen, then its
    right half over it, so that the second frame shows more colours than one palette holds."""
    rng = random.Random(9)
    images = []
    for size, step in (((64, 32), 1), ((32, 32), 7)):
        image = Image.frombytes("L", size, bytes(i * step % 256 for i in range(size[0] * size[1]))).convert("P")
        image.putpalette(rng.randbytes(768))
        images.append(image)
    return gif_of((64, 32), [(images[0], (0, 0), 500, 0, None), (images[1], (32, 0), 700, 0, None)])


def gif_of(size: tuple[int, int], images: list, loop: int = 0) -> bytes:
    """A GIF written by hand, which Pillow's writer cannot write: each image (mode P) at its own
    place with its own colour table. `images`: (image, (left, top), duration in ms, disposal,
    transparent index or None)."""
    data = bytearray(b"GIF89a" + struct.pack("<HHBBB", *size, 0, 0, 0))
    data += b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", loop) + b"\x00"
    for image, (left, top), duration, disposal, transparency in images:
        control = disposal << 2 | (transparency is not None)
        data += b"!\xf9\x04" + struct.pack("<BHBB", control, duration // 10, transparency or 0, 0)
        palette = bytes(image.getpalette()).ljust(768, b"\x00")
        data += b"," + struct.pack("<HHHHB", left, top, *image.size, 0x87) + palette + _lzw(image.tobytes())
    return bytes(data + b";")


def _lzw(indices: bytes) -> bytes:
    """8-bit colour indices as GIF's LZW data, uncompressed: a clear code every 250 indices keeps
    the codes 9 bits long."""
    codes = []
    for start in range(0, len(indices), 250):
        codes += [256, *indices[start : start + 250]]
    codes.append(257)  # end of information
    packed = sum(code << 9 * index for index, code in enumerate(codes))
    raw = packed.to_bytes((9 * len(codes) + 7) // 8, "little")
    sub_blocks = b"".join(bytes([len(raw[i : i + 255])]) + raw[i : i + 255] for i in range(0, len(raw), 255))
    return b"\x08" + sub_blocks + b"\x00"  # the minimum code size, the sub-blocks, their terminator


def jpeg_padded(comments: int) -> bytes:
    """A 16x16 JPEG with `comments` empty COM segments after its scan (allowed, and skipped)."""
    data = encode(picture("RGB", (16, 16)), "JPEG")
    return data[:-2] + b"\xff\xfe\x00\x02" * comments + data[-2:]  # before the EOI


def png_padded(chunks: int) -> bytes:
    """A 16x16 PNG with `chunks` empty private chunks after its header (allowed, and skipped)."""
    data = encode(picture("RGB", (16, 16)), "PNG")
    return data[:33] + png_chunk(b"flPz", b"") * chunks + data[33:]  # the signature and IHDR are 33 bytes


def png_idat_padded(chunks: int) -> bytes:
    """A 16x16 PNG whose pixels follow `chunks` empty IDAT chunks (allowed: zlib's stream goes on)."""
    data = encode(picture("RGB", (16, 16)), "PNG")
    pixels = data.index(b"IDAT") - 4  # Pillow writes no chunk between the IHDR and the pixels here
    return data[:pixels] + png_chunk(b"IDAT", b"") * chunks + data[pixels:]


def tiff_of_entries(pages: int, entries: int) -> bytes:
    """A TIFF of `pages` 4x4 pages whose directories have `entries` entries in all: each page's
    own, then private one-byte tags (allowed, and kept) spread over the pages."""
    def padding(index: int, own: int, _: int) -> list[bytes]:
        count = (entries - own) // pages + (index < (entries - own) % pages)
        return [_private_tag(i) for i in range(count)]

    return _tiff_pages_with(pages, padding)


def tiff_with_later_pages_exif(pages: int, entries: int) -> bytes:
    """A TIFF of `pages` 4x4 pages whose later pages all point to one EXIF directory of `entries`
    private one-byte tags (the first page has none)."""
    def pointer(index: int, _: int, exif_directory: int) -> list[bytes]:
        return [struct.pack("<HHII", 34665, 4, 1, exif_directory)] if index else []

    return _tiff_pages_with(pages, pointer, struct.pack("<H", entries) + b"".join(map(_private_tag, range(entries)))
                            + b"\0\0\0\0")


def _private_tag(index: int) -> bytes:
    return struct.pack("<HHI4s", 1000 + index, 1, 1, b"\1\0\0\0")


def _tiff_pages_with(pages: int, entries_for, appended: bytes = b"") -> bytes:
    """A little-endian TIFF of `pages` 4x4 pages, `appended` after them, and each page's directory
    moved to the end with entries_for(page index, entries of all pages' own, where `appended` starts)
    added."""
    frames = [Image.new("L", (4, 4), 100) for _ in range(pages)]
    data = bytearray(encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    offsets, offset = [], struct.unpack_from("<I", data, 4)[0]
    while offset:
        offsets.append(offset)
        offset = struct.unpack_from("<I", data, offset + 2 + 12 * struct.unpack_from("<H", data, offset)[0])[0]
    own = sum(struct.unpack_from("<H", data, offset)[0] for offset in offsets)
    start = len(data)
    data += appended
    link = 4  # where the offset of the next directory is written
    for index, offset in enumerate(offsets):
        count = struct.unpack_from("<H", data, offset)[0]
        table = [bytes(data[offset + 2 + 12 * i : offset + 14 + 12 * i]) for i in range(count)]
        table += entries_for(index, own, start)
        table.sort(key=lambda entry: struct.unpack_from("<H", entry)[0])
        struct.pack_into("<I", data, link, len(data))
        link = len(data) + 2 + 12 * len(table)
        data += struct.pack("<H", len(table)) + b"".join(table) + b"\0\0\0\0"
    return bytes(data)


def tiff_in_one_tile(size: tuple[int, int], tile: tuple[int, int]) -> bytes:
    """A greyscale TIFF of `size` in one deflated tile of `tile` pixels (at least as large)."""
    pixels = zlib.compress(bytes(tile[0] * tile[1]), 9)
    entries = [(256, 4, size[0]), (257, 4, size[1]), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
               (322, 4, tile[0]), (323, 4, tile[1]), (324, 4, 8), (325, 4, len(pixels))]
    directory = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                                                           for tag, kind, value in entries)
    return b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + directory + bytes(4)


def bmp_rle8(size: tuple[int, int], run: int) -> bytes:
    """A grey run-length coded BMP (RLE8) of `size`, each row in runs of `run` pixels of one shade."""
    width, height = size
    runs = [(min(run, width - x), x // run % 256) for x in range(0, width, run)]
    rows = (b"".join(bytes(pair) for pair in runs) + b"\0\0") * height + b"\0\1"  # each row's end, the end
    palette = b"".join(bytes((shade, shade, shade, 0)) for shade in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    start = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", start + len(rows), 0, 0, start) + info + palette + rows


def bmp_with_alpha(im: Image.Image, header: int = 124) -> bytes:
    """`im` (RGBA) as a 32-bit BMP whose BI_BITFIELDS masks name its alpha: a V4 (108-byte) or V5
    (124-byte) header, as browsers and image editors write one."""
    width, height = im.size
    rows = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).tobytes("raw", "BGRA")  # bottom row first
    masks = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    info = struct.pack("<IiiHHIIiiII", header, width, height, 1, 32, 3, len(rows), 2835, 2835, 0, 0) + masks
    info += b"BGRs" + bytes(header - len(info) - 4)  # sRGB; endpoints, gammas (and V5's intent, profile)
    start = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", start + len(rows), 0, 0, start) + info + rows


def exif_of_entries(entries: int, in_exif_directory: int = 0) -> bytes:
    """An EXIF (with its "Exif" header) whose first directory has `entries` entries in all, one of
    them the pointer to an EXIF directory of `in_exif_directory` more when that is not 0: private
    one-byte tags (allowed, and kept)."""
    def directory(count: int, pointer: int = 0) -> bytes:
        table = [struct.pack("<HHI4s", 1000 + i, 1, 1, b"\1\0\0\0") for i in range(count - bool(pointer))]
        table += [struct.pack("<HHII", 0x8769, 4, 1, pointer)] if pointer else []
        table.sort(key=lambda entry: struct.unpack_from("<H", entry))
        return struct.pack("<H", count) + b"".join(table) + b"\0" * 4

    exif_at = 8 + 2 + 12 * entries + 4  # after the header and the first directory
    data = b"II*\0" + struct.pack("<I", 8) + directory(entries, exif_at if in_exif_directory else 0)
    if in_exif_directory:
        data += directory(in_exif_directory)
    return b"Exif\0\0" + data


def gif_comment_of_sub_blocks(sub_blocks: int) -> bytes:
    """A 16x16 GIF followed by a comment of `sub_blocks` one-byte sub-blocks (allowed, and kept)."""
    data = encode(picture("P", (16, 16)), "GIF")
    return data[:-1] + b"!\xfe" + b"\x01c" * sub_blocks + b"\x00" + data[-1:]  # before the trailer


def gif_padded(extensions: int) -> bytes:
    """A 16x16 GIF followed by `extensions` empty comment extensions (allowed, and skipped)."""
    data = encode(picture("P", (16, 16)), "GIF")
    return data[:-1] + b"!\xfe\x00" * extensions + data[-1:]  # before the trailer


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Random RGB pixels: what compresses worst, so the heaviest picture of its size."""
    width, height = size
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))


def noise_jpeg(size: tuple[int, int], quality: int = 90) -> bytes:
    """About 0.9 bytes a pixel at quality 90 (4300x5300: ~20 MB)."""
    return encode(noise(size), "JPEG", quality=quality)


def noise_png(size: tuple[int, int]) -> bytes:
    """3 bytes a pixel that zlib cannot shrink: seconds of work to flip at photo sizes."""
    return encode(noise(size), "PNG")


def strips_tiff(strips: int, order: str = "<") -> bytes:
    """A grey TIFF of 1 x `strips` pixels, one row a strip: its offsets and byte counts list
    `strips` values each."""
    magic = b"II*\0" if order == "<" else b"MM\0*"
    directory = 8
    offsets_at = directory + 2 + 9 * 12 + 4  # after the directory's 9 entries and its next offset
    counts_at = offsets_at + 4 * strips
    pixels = counts_at + 4 * strips
    # tag, count, value (LONG); StripOffsets and StripByteCounts point at their arrays
    tags = [(256, 1, 1), (257, 1, strips), (258, 1, 8), (259, 1, 1), (262, 1, 1), (273, strips, offsets_at),
            (277, 1, 1), (278, 1, 1), (279, strips, counts_at)]
    entries = b"".join(struct.pack(order + "HHII", tag, 4, count, value) for tag, count, value in tags)
    offsets = struct.pack(f"{order}{strips}I", *range(pixels, pixels + strips))
    counts = struct.pack(f"{order}{strips}I", *([1] * strips))
    return (magic + struct.pack(order + "I", directory) + struct.pack(order + "H", len(tags)) + entries
            + b"\0\0\0\0" + offsets + counts + b"\x80" * strips)
