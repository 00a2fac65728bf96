"""Helpers shared by the format tests: pictures with metadata, checks of what a flip wrote."""

import io
import struct
import zlib

from PIL import ExifTags, Image, ImageCms

from service import imaging
from service.formats import jpeg_markers as markers
from tests.pictures import (
    decode,
    encode,
    photo,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


EXIF_DIRECTORY = {0x9003: "2013:07:01 13:44:41", 0x829A: 0.01, 0xA002: 48}  # DateTimeOriginal...


def handmade_tiff(size, bits, photometric, pixels, *, extra=None, deflate=False, planes=False, tags=None):
    """A classic TIFF written with Pillow's own directory writer, for layouts that Pillow reads
    but does not write itself (16 bits a sample, Adobe deflate with an EXIF directory, as
    Photoshop and Pixelmator write them; separate planes): one strip, or one per plane."""
    from PIL import TiffImagePlugin

    if planes:  # `pixels` interleaved, 8 bits a sample: one strip of each sample instead
        strips = [pixels[index :: len(bits)] for index in range(len(bits))]
    else:
        strips = [pixels]
    strips = [zlib.compress(strip) if deflate else strip for strip in strips]
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    ifd[256], ifd[257] = size
    ifd[258], ifd[259], ifd[262], ifd[277] = bits, 8 if deflate else 1, photometric, len(bits)
    ifd[278], ifd[284] = size[1], 2 if planes else 1
    if extra is not None:
        ifd[338] = extra  # ExtraSamples: 1 is associated alpha, what Pillow reads as "RGBa"
    for tag, value in (tags or {}).items():
        ifd[tag] = value
    # StripOffsets from the end of the directory: the writer moves them past it, to the data.
    ifd[273] = tuple(sum(len(strip) for strip in strips[:index]) for index in range(len(strips)))
    ifd[279] = tuple(len(strip) for strip in strips)
    out = io.BytesIO()
    out.write(b"II*\x00" + struct.pack("<I", 8))
    out.seek(ifd.save(out))
    out.write(b"".join(strips))
    return out.getvalue()


def flips_exactly(source):
    """The flip of `source`, checked pixel by pixel against Pillow's transpose of its decoding."""
    result = imaging.flip(source)
    original, flipped = Image.open(io.BytesIO(source)), Image.open(io.BytesIO(result.data))
    for index in range(result.frames):
        original.seek(index)
        flipped.seek(index)
        assert flipped.mode == original.mode
        assert flipped.tobytes() == original.transpose(DOWN).tobytes()
    return result, decode(result.data)


def exif_tags(**named):
    exif = Image.Exif()
    for name, value in named.items():
        exif[getattr(ExifTags.Base, name)] = value
    return exif.tobytes()


def jpeg_with_unwritable_exif() -> bytes:
    """A JPEG whose XResolution is stored as text: Pillow reads it but cannot write it again
    (TypeError: bad operand type for abs())."""
    from PIL import TiffImagePlugin, TiffTags

    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    ifd[ExifTags.Base.Make] = "flipfleet camera"
    ifd[ExifTags.Base.XResolution] = "72"
    ifd.tagtype[ExifTags.Base.XResolution] = TiffTags.ASCII
    return encode(photo((64, 48)), "JPEG", exif=b"Exif\0\0II*\0\x08\0\0\0" + ifd.tobytes(8), icc_profile=SRGB)


def with_pixel_dimensions(fmt: str, orientation: int) -> bytes:
    """A 128x64 picture whose EXIF has an orientation and PixelXDimension and PixelYDimension."""
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = orientation
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.ExifImageWidth: 128, ExifTags.Base.ExifImageHeight: 64})
    return encode(photo((128, 64)), fmt, exif=exif.tobytes())


def exif_pixel_dimensions(data: bytes) -> tuple[int, int]:
    directory = decode(data).getexif().get_ifd(ExifTags.IFD.Exif)
    return directory[ExifTags.Base.ExifImageWidth], directory[ExifTags.Base.ExifImageHeight]


# Each pixel counts for this many against the pixel limits (imaging.PEAK_BYTES_PER_PIXEL / 8).
WEIGHTS = {"HEIF": 1.25, "AVIF": 4}


def counted(size: tuple[int, int], weight: float) -> int:
    """What a picture of `size` counts for against the pixel limits: its pixels, weighted, and its rows."""
    width, height = size
    return int(width * height * weight + height * imaging.ROW_BYTES / imaging.LIMITS_BYTES_PER_PIXEL)


PHONE_PEAK_SCRIPT = """
import io, sys
from pathlib import Path
from PIL import Image
from service import imaging

def status(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(field + ":")).split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
# Warm, with a small picture of the same kind: imports and codecs loaded, and nothing of the
# measured one's size left in the heap for it to reuse.
im = Image.open(io.BytesIO(data))
small = io.BytesIO()
Image.effect_noise((64, 48), 64).convert(im.mode).save(small, im.format, quality=90)
imaging.flip(small.getvalue())
Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on
before = status("VmRSS")
imaging.flip(data)
print(status("VmHWM") - before)
"""


def cornered(size: tuple[int, int]) -> Image.Image:
    """Black but for one red pixel in the top left corner: where it ends up shows the transpose."""
    im = Image.new("RGB", size)
    im.putpixel((0, 0), (255, 0, 0))
    return im


def tiff_entries(data):
    """(directory offset, entry offset, tag, type) of every entry of a classic little-endian TIFF."""
    (ifd,) = struct.unpack("<I", data[4:8])
    while ifd:
        (count,) = struct.unpack("<H", data[ifd : ifd + 2])
        for index in range(count):
            at = ifd + 2 + 12 * index
            yield ifd, at, *struct.unpack("<HH", data[at : at + 4])
        (ifd,) = struct.unpack("<I", data[ifd + 2 + 12 * count : ifd + 6 + 12 * count])


# name -> (mode, save params): what Pillow writes, each coding and subsampling.
SOURCES = {
    "4:2:0": ("RGB", {"subsampling": "4:2:0"}),
    "4:2:2": ("RGB", {"subsampling": "4:2:2"}),
    "4:4:4": ("RGB", {"subsampling": "4:4:4"}),
    "grey": ("L", {}),
    "CMYK": ("CMYK", {}),  # Pillow writes Adobe APP14 CMYK
    "progressive": ("RGB", {"progressive": True}),
    "progressive 4:4:4": ("RGB", {"progressive": True, "subsampling": "4:4:4"}),
}


# A multiple of every MCU size: every transform is perfect.
ALIGNED = (320, 240)


def jpeg(name: str, size=ALIGNED, quality: int = 90, im: Image.Image | None = None, **extra) -> bytes:
    mode, params = SOURCES[name]
    return encode(im or photo(size, mode), "JPEG", quality=quality, **params, **extra)


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment) of every header segment."""
    return [(marker, data[start:end]) for marker, start, end in markers.segments(data)]


def app_segments(data: bytes) -> list[bytes]:
    return [seg for marker, seg in segments(data) if 0xE0 <= marker <= 0xEF or marker == 0xFE]
