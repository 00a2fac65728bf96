"""HEIC (HEVC in HEIF, through pillow-heif) and AVIF (AV1 in HEIF, Pillow's own): decoded and
written again at quality 90, neither keeping a quality setting to reuse. A flip keeps the EXIF
(less the orientation), the XMP, the ICC profile or NCLX colour description, the chroma
subsampling, an AVIF sequence's frames and its creation and modification times, and, for HEIC,
the other images of the file and their metadata items; depth and
auxiliary images are not read, as they would not be flipped with the picture. A HEIC of 10 or 12
bits a sample is written at 8 (Flipped.dropped names it)."""

from __future__ import annotations

import pillow_heif

from service.formats import metadata
from service.formats.base import Format

pillow_heif.register_heif_opener(depth_images=False, aux_images=False)

# At 90, two flips of a quality-90 photo stay above 50 dB PSNR for HEIC and near 40 dB for AVIF,
# whose colour conversion costs more than its quality (tests/test_heif.py).
LOSSY_HEIF_QUALITY = LOSSY_AVIF_QUALITY = 90
# x265's fastest preset: a 12 MP photo in 2 s instead of 13 s at libheif's default ("slow"),
# for files as large (a grainy photo) to 40 % larger (a smooth one); libaom's speed 8 instead of
# 6: 0.8 s instead of 4.8 s, 4 % larger. Measured on a 2-core machine: the default
# FLIP_MAX_SECONDS is 10.
HEIF_PRESET = "ultrafast"
AVIF_SPEED = 8
# HEIC written as a grid of tiles of this size, as iPhones write it: x265 encodes one tile at a
# time, in a fifth of the memory of the whole picture at once (and a third faster). HEIC with
# alpha is written as one image, not tiles.
HEIF_TILE = 512
ITEM_TYPE_BYTES = 4  # a metadata item's type is a four-character code
# A picture has an AV1 configuration box an image (colour, alpha, a grid's tiles); 24 MB of
# them took 2 s to look through, 1,000 take microseconds.
AV1C_MOST = 1_000
# The AV1 configuration box: its third byte holds monochrome, then the horizontal and vertical
# chroma subsampling bits.
AV1C = b"av1C"
AV1_SUBSAMPLING = {(0, 0): "4:4:4", (1, 0): "4:2:2", (1, 1): "4:2:0"}
# ISO BMFF boxes that hold the sequence's tracks, and those that hold a creation and a
# modification time (movie, track, media header): libavif writes its clock's time into each.
MOVIE_CONTAINERS = frozenset({b"moov", b"trak", b"mdia"})
TIMED_BOXES = frozenset({b"mvhd", b"tkhd", b"mdhd"})
# An AVIF sequence has a few boxes a track; 1,000 are walked in microseconds.
BOXES_MOST = 1_000
SOURCE_TIMES = "source_times"  # the writer's parameter that Avif.prepare_write takes back


class Heif(Format):
    name, media_type = "HEIF", "image/heic"
    media_type_aliases = ("image/heif", "image/heic-sequence", "image/heif-sequence")
    peak_bytes_per_pixel = {("HEIF", False): 10, ("HEIF", True): 45}

    def narrowed_to_8_bits(self, frame):
        return frame.info.get("bit_depth", 8) > 8

    def save_params(self, im, data, params, walk, turned, later_page):
        # pillow-heif takes the XMP (its orientation already removed on reading), the NCLX colour
        # description and the grid's tile size from each frame's own info; thumbnails are made
        # anew from the flipped pixels, at the sizes the source's had.
        params = {**params, **metadata.exif_params(metadata.read(im), turned),
                  "quality": LOSSY_HEIF_QUALITY, "enc_params": {"preset": HEIF_PRESET}, "tile_size": HEIF_TILE}
        if im.info.get("chroma"):
            params["chroma"] = im.info["chroma"]
        return params

    def prepare_write(self, frames, pages):
        for frame in frames:  # libheif writes an item of a four-byte type only, and raises on another
            if "metadata" in frame.info:
                frame.info["metadata"] = [item for item in frame.info["metadata"]
                                          if len(str(item.get("type", "")).encode()) == ITEM_TYPE_BYTES]


class Avif(Format):
    name, media_type = "AVIF", "image/avif"
    media_type_aliases = ("image/avif-sequence",)
    peak_bytes_per_pixel = {("AVIF", False): 32, ("AVIF", True): 36}

    def save_params(self, im, data, params, walk, turned, later_page):
        params = {**params, **metadata.exif_params(metadata.read(im), turned),
                  "quality": LOSSY_AVIF_QUALITY, "speed": AVIF_SPEED}
        subsampling = av1_subsampling(data)
        if subsampling:
            params["subsampling"] = subsampling
        if im.info.get("xmp"):
            # Pillow writes only the XMP it is given; taken out, its orientation is not applied twice.
            params["xmp"] = metadata.xmp_without_orientation(im.info["xmp"])
        params[SOURCE_TIMES] = movie_times(data)
        return params

    def prepare_write(self, frames, pages):
        return pages[0].pop(SOURCE_TIMES, (0, 0))

    def finish_write(self, data, frames, prepared):
        return with_times(data, prepared)


def av1_subsampling(data: bytes) -> str | None:
    """The chroma subsampling of the AVIF's colour image (Pillow does not tell it), to write it
    back the same: the least subsampled of its configuration boxes that are not monochrome (an
    alpha image's is), of the first AV1C_MOST found; None when none is found."""
    found, at = [], data.find(AV1C)
    for _ in range(AV1C_MOST):
        if at == -1 or at + 7 > len(data):
            break
        flags = data[at + 6]
        if not flags & 0x10:  # monochrome
            found.append(AV1_SUBSAMPLING.get(((flags >> 3) & 1, (flags >> 2) & 1)))
        at = data.find(AV1C, at + 4)
    found = [value for value in found if value]
    return min(found, key=list(AV1_SUBSAMPLING.values()).index) if found else None


def movie_times(data: bytes) -> tuple[int, int]:
    """The creation and modification times of the AVIF sequence's movie header (mvhd), in seconds
    since 1904; (0, 0), "unknown", for a still picture or when none is found in BOXES_MOST boxes."""
    return next((times for kind, times in box_times(data) if kind == b"mvhd"), (0, 0))


def box_times(data: bytes) -> list[tuple[bytes, tuple[int, int]]]:
    """(type, (creation, modification)) of each movie, track and media header of the AVIF."""
    return [(kind, (int.from_bytes(data[at + 4 : at + 4 + width], "big"),
                    int.from_bytes(data[at + 4 + width : at + 4 + 2 * width], "big")))
            for kind, at, width in _timed_boxes(data)]


def with_times(data: bytes, times: tuple[int, int]) -> bytes:
    """The AVIF `data` with `times` (creation, modification) in each movie, track and media
    header: libavif writes the time of writing there, which would make each answer differ from
    the last and tell the replica's clock. Unchanged for a still picture."""
    patched = None
    for _, at, width in _timed_boxes(data):
        patched = patched or bytearray(data)
        for index, value in enumerate(times):
            start = at + 4 + index * width
            patched[start : start + width] = min(value, 2 ** (8 * width) - 1).to_bytes(width, "big")
    return bytes(patched) if patched else data


def _timed_boxes(data: bytes, start: int = 0, end: int | None = None, walked: list | None = None,
                 depth: int = 0):
    """(type, where its body starts, the bytes of a time: 4 or 8 by its version) of each mvhd, tkhd
    and mdhd box that holds both its times, within the first BOXES_MOST boxes of the movie."""
    end = len(data) if end is None else end
    walked = [0] if walked is None else walked
    at = start
    while at + 8 <= end and walked[0] < BOXES_MOST:
        walked[0] += 1
        size, kind, header = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8], 8
        if size == 1:  # a 64-bit size follows the type
            size, header = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:  # to the end of its container
            size = end - at
        if size < header or at + size > end:
            return
        if kind in MOVIE_CONTAINERS and depth < len(MOVIE_CONTAINERS):  # moov, trak, mdia: three deep
            yield from _timed_boxes(data, at + header, at + size, walked, depth + 1)
        elif kind in TIMED_BOXES and size > header:
            width = 8 if data[at + header] == 1 else 4
            if size >= header + 4 + 2 * width:  # the version and flags, then the two times
                yield kind, at + header, width
        at += size


HEIF, AVIF = Heif(), Avif()
