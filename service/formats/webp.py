"""WebP, lossy or lossless (VP8 or VP8L), still or animated: decoded and written again by Pillow,
a lossless source losslessly (every pixel, transparent ones' colours too), a lossy one at
quality 90. A flip keeps the EXIF (less the orientation), the XMP, the ICC profile, each frame's
duration and the loop count.

The RIFF chunks are walked once, before Pillow reads them: their count is bounded, and the walk
tells a lossless WebP from a lossy one."""

from __future__ import annotations

from service.formats import metadata
from service.formats.base import Format, TooCostly

LOSSY_QUALITY = 90
# For lossless WebP, "quality" is the encoder's effort: at 50 a 3 MP photo's file came out as large
# as at 100 (within 0.1 %) in half the CPU, and a 4 MP picture of noise took 1.4 s instead of 12.
LOSSLESS_EFFORT = 50
# A WebP holds a few chunks, an animation about 3 a frame (ANMF and the 1 or 2 inside it): this
# is over 6,000 frames, and walking them takes about 20 ms.
MOST_CHUNKS = 20_000
LOSSLESS = "lossless WEBP"  # the memory format of a WebP whose every bitstream is VP8L


class Webp(Format):
    name, media_type = "WEBP", "image/webp"
    peak_bytes_per_pixel = {("WEBP", False): 24, ("WEBP", True): 52, (LOSSLESS, False): 46, (LOSSLESS, True): 54}

    def recognises(self, data):
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"

    def walk(self, data, limits):
        return is_lossless(data)

    def memory_format(self, frame, data, walk):
        return LOSSLESS if walk else frame.format

    def save_params(self, im, data, params, walk, turned, later_page):
        params = {**params, **metadata.exif_params(metadata.read(im), turned)}
        if walk:
            return {**params, "lossless": True, "quality": LOSSLESS_EFFORT, "exact": True}
        return {**params, "quality": LOSSY_QUALITY}


def is_lossless(data: bytes) -> bool:
    """True when every bitstream in the RIFF container is VP8L (lossless), none VP8. Walking
    more than MOST_CHUNKS chunks is refused: empty ones cost 8 bytes and a loop turn each."""
    kinds = set()
    walked = 0
    offset = 12  # past "RIFF", size, "WEBP"
    while offset + 8 <= len(data):
        tag = data[offset : offset + 4]
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        if tag == b"ANMF":
            body = offset + 8 + 16  # frame header, then the frame's own chunks
            while body + 8 <= offset + 8 + size:
                sub = data[body : body + 4]
                sub_size = int.from_bytes(data[body + 4 : body + 8], "little")
                if sub in (b"VP8 ", b"VP8L"):
                    kinds.add(sub)
                body += 8 + sub_size + (sub_size & 1)
                walked += 1
        elif tag in (b"VP8 ", b"VP8L"):
            kinds.add(tag)
        offset += 8 + size + (size & 1)
        walked += 1
        if walked > MOST_CHUNKS:
            raise TooCostly(f"the WebP has more than {MOST_CHUNKS:,} chunks, the most a picture may have "
                            "(an animation has about 3 a frame): each costs time before any pixel")
    return kinds == {b"VP8L"}


FORMAT = Webp()
