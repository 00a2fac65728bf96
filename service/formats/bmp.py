"""BMP: decoded and written again by Pillow, uncompressed. A flip keeps the resolution and, for
a 32-bit BMP with an alpha mask (a V4 or V5 header), the alpha. Run-length coded sources are
written back uncompressed."""

from __future__ import annotations

import struct

from service.formats.base import Format

# A run-length coded BMP is decoded by Pillow in Python, a run at a time: 30 to over 100 ns a
# pixel against a JPEG's 8, and a 124-byte one of 49 million pixels took 7 s. Its pixels count
# this many times against the pixel limits, for time, not memory.
RLE = "run-length BMP"
RLE_COMPRESSIONS = (1, 2)  # RLE8, RLE4: the compression field of the info header
# BITMAPV4HEADER's fields after the 40 bytes of the plain header: the colour masks (red, green,
# blue, alpha) of BI_BITFIELDS, the colour space (sRGB), and its unused endpoints and gammas.
INFO_HEADER, V4_HEADER, BITFIELDS = 40, 108, 3
V4_FIELDS = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + bytes(48)


class Bmp(Format):
    name, media_type = "BMP", "image/bmp"
    media_type_aliases = ("image/x-ms-bmp",)
    slow_pixel_weights = {RLE: 8}

    def memory_format(self, frame, data, walk):
        return RLE if int.from_bytes(data[30:34], "little") in RLE_COMPRESSIONS else frame.format

    def finish_write(self, data, frames, prepared):
        return with_alpha_mask(data) if frames[0].mode == "RGBA" else data


def with_alpha_mask(data: bytes) -> bytes:
    """Pillow's 32-bit BMP of an RGBA picture with the header that says its fourth byte is alpha.
    Pillow writes the alpha bytes under a plain header (BI_RGB), which readers, Pillow's own
    included, read as RGB: a V4 header with BI_BITFIELDS and an alpha mask keeps the alpha."""
    size, bits, compression = (struct.unpack_from("<I", data, 14)[0], struct.unpack_from("<H", data, 28)[0],
                               struct.unpack_from("<I", data, 30)[0])
    if size != INFO_HEADER or bits != 32 or compression != 0:
        return data
    grown = V4_HEADER - INFO_HEADER
    file_size, reserved, pixels_at = struct.unpack_from("<IIi", data, 2)
    return (b"BM" + struct.pack("<IIi", file_size + grown, reserved, pixels_at + grown)
            + struct.pack("<I", V4_HEADER) + data[18:30] + struct.pack("<I", BITFIELDS) + data[34:54]
            + V4_FIELDS + data[54:])


FORMAT = Bmp()
