"""TIFF, one page or many: each page decoded, turned by its own orientation, flipped and written
again by Pillow with its own compression (LZW, Deflate, JPEG, CCITT...), resolution, ICC profile,
descriptive tags (software, artist, copyright, XMP...) and, for the first page, its EXIF and GPS
directories; the page numbers are written as the source's. The layout tags are the writer's own.

The directories are counted before Pillow reads them (service.formats.ifd): Pillow makes a Python
object of every number in them."""

from __future__ import annotations

from PIL import ExifTags, Image

from service.formats import ifd, metadata
from service.formats.base import Format, TooCostly, eight_bit_mode

RESOLUTION_UNIT, X_RESOLUTION, Y_RESOLUTION = 296, 282, 283
# A resolution's unit -> the factor to dots per inch: none given (read as inches), inch, centimetre.
DPI_UNITS = {None: 1, 2: 1, 3: 2.54}
BITS_PER_SAMPLE, ICC_PROFILE, XMP = 258, 34675, 700
TILE_WIDTH, TILE_LENGTH = 322, 323
# A tile of up to this many pixels is no matter, whatever the picture's size (writers use 256 or
# 512 a side): a 313 KB TIFF of 16x16 pixels in one 46,336x46,336 tile held 2 GB as libtiff read it.
ANY_TILE_PIXELS = 1024 * 1024
# An LZMA-compressed TIFF is written back with LZMA: libtiff's xz encoder takes 70 to 110 ns a
# pixel, in one call the deadline cannot stop (a 439 KB TIFF of 50 MP took 5.5 s). Its pixels
# count this many times against the pixel limits, for time, not memory.
LZMA = "LZMA-compressed TIFF"
# The tags of a page's directory (what Pillow's getexif() gives for a TIFF) that describe how the
# source stored its pixels, not what the picture shows: the writer chooses its own. Written back
# from the source they would override the writer's layout (the source's width over a rotated
# picture's, 16 bits a sample over the 8 Pillow decoded to, a 2**32-entry ColorMap, a YCbCr
# photometric over RGB data) and libtiff refuses many of them. Resolution and the ICC profile are
# left out too: the dpi and icc_profile parameters carry them.
LAYOUT_TAGS = frozenset({
    255,  # SubfileType (old)
    256, 257,  # ImageWidth, ImageLength
    258, 259,  # BitsPerSample, Compression
    262, 263, 264, 265, 266,  # PhotometricInterpretation, Threshholding, CellWidth, CellLength, FillOrder
    273, 277, 278, 279,  # StripOffsets, SamplesPerPixel, RowsPerStrip, StripByteCounts
    280, 281,  # MinSampleValue, MaxSampleValue
    282, 283, 296,  # XResolution, YResolution, ResolutionUnit: the dpi parameter
    284, 288, 289,  # PlanarConfiguration, FreeOffsets, FreeByteCounts
    290, 291, 292, 293,  # GrayResponseUnit, GrayResponseCurve, T4Options, T6Options
    301, 317, 320, 321,  # TransferFunction, Predictor, ColorMap, HalftoneHints
    322, 323, 324, 325,  # TileWidth, TileLength, TileOffsets, TileByteCounts
    330, 332, 334, 336,  # SubIFDs, InkSet, NumberOfInks, DotRange
    338, 339, 340, 341, 342,  # ExtraSamples, SampleFormat, SMinSampleValue, SMaxSampleValue, TransferRange
    347, 400,  # JPEGTables, GlobalParametersIFD
    *range(512, 522),  # old-style JPEG
    529, 530, 531, 532,  # YCbCrCoefficients, YCbCrSubSampling, YCbCrPositioning, ReferenceBlackWhite
    32997, 32998,  # ImageDepth, TileDepth
    34675,  # InterColorProfile: the icc_profile parameter
    37724,  # ImageSourceData: Photoshop's layers, the pixels before the flip
})
# What a later page is written with when it has none of its own: nothing of the first page's.
NO_PAGE_METADATA = {"exif": b"", "dpi": None, "icc_profile": None, "compression": "raw"}


class Tiff(Format):
    name, media_type = "TIFF", "image/tiff"
    signatures = tuple(ifd.HEADERS)
    slow_pixel_weights = {LZMA: 8}
    own_pages = True

    def walk(self, data, limits):
        metadata.check_directories(ifd.counts(data, limits.max_frames + 1), "the TIFF's pages have")

    def exifs(self, im, data, walk):
        return []  # a TIFF's EXIF is its first page's directories, counted by walk

    def memory_format(self, frame, data, walk):
        return LZMA if frame.info.get("compression") == "lzma" else frame.format

    def narrowed_to_8_bits(self, frame):
        return 16 in frame.tag_v2.get(BITS_PER_SAMPLE, ()) and eight_bit_mode(frame.mode)

    def check_frame(self, frame):
        """Refuse a page whose tiles are larger than the page (its sides rounded up to 16, as a
        tile's are) and than ANY_TILE_PIXELS: libtiff decodes a tile at a time into a buffer of
        the tile's size, which the page's pixels do not count for."""
        width, length = frame.tag_v2.get(TILE_WIDTH), frame.tag_v2.get(TILE_LENGTH)
        if not width or not length:
            return
        page_pixels = -(-frame.width // 16) * 16 * -(-frame.height // 16) * 16
        if width * length > max(page_pixels, ANY_TILE_PIXELS):
            raise TooCostly(f"the TIFF's {width:,}x{length:,} tiles are larger than its "
                            f"{frame.width:,}x{frame.height:,} picture: decoding one costs memory its pixels do "
                            "not count for")

    def save_params(self, im, data, params, walk, turned, later_page):
        # From the page's own directory: Pillow leaves an earlier page's profile and dpi in info
        # as it turns to a page without them, and reports a page without a resolution as 1x1 dpi.
        params = {key: value for key, value in params.items() if key not in ("icc_profile", "dpi")}
        if im.tag_v2.get(ICC_PROFILE):
            params["icc_profile"] = im.tag_v2[ICC_PROFILE]
        if (dpi := _dpi(im.tag_v2)) is not None:
            params["dpi"] = dpi
        params.update(_exif_params(im, turned, read_directories=not later_page))
        compression = im.info.get("compression")
        if compression and compression != "raw":
            params["compression"] = compression
        return params

    def prepare_write(self, frames, pages):
        page_numbers = [_page_number(page) for page in pages]
        for page in pages:
            parts = [page.pop(key) for key in ("tiff_tags", "exif") if key in page]
            if parts:
                page["exif"] = tiff_exif(*parts)
        # Each later page has its own metadata and compression: the writer would give it the first
        # page's (and a bilevel page's CCITT does not fit a greyscale one).
        for frame, page in zip(frames[1:], pages[1:], strict=True):
            frame.encoderinfo = {**NO_PAGE_METADATA, **page}
        return page_numbers

    def finish_write(self, data, frames, prepared):
        return ifd.with_page_numbers(data, prepared)


def _exif_params(im: Image.Image, turned: bool, read_directories: bool) -> dict:
    """The page's directory, as Pillow's getexif() gives it, to write back: its layout tags left out
    (LAYOUT_TAGS), the orientation too (the flip applies it), and what remains in two parts that
    can be dropped apart, the descriptive tags ("tiff_tags": software, artist, copyright, XMP...)
    and the EXIF and GPS directories ("exif"), which Pillow's libtiff writer (any compressed TIFF)
    cannot write. Either part is metadata.UNWRITABLE when Pillow read it but cannot turn it into
    bytes again; the directories are, unread, without `read_directories` (a later page: Pillow's
    writer leaves a later page's pointers to them wrong, and ifd.counts does not count them)."""
    exif = metadata.read(im)
    if not exif:
        return {}
    if metadata.ORIENTATION in exif:
        del exif[metadata.ORIENTATION]
    tags, directories, unreadable = {}, {}, False
    for tag in list(exif):
        try:
            value = exif[tag]
        except KeyError:  # listed but not kept: Pillow stores no value of a wrong count (262 of two)
            continue
        if tag in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
            if not read_directories:
                unreadable = True
                continue
            try:
                value = _sub_directory(exif, tag)
            except metadata.EXIF_WRITE_ERRORS:
                unreadable = True
                continue
            if tag == ExifTags.IFD.Exif and turned:
                metadata.swap_pixel_dimensions(value)
            if value:
                directories[tag] = value
        elif tag == XMP and isinstance(value, bytes):
            tags[tag] = metadata.xmp_without_orientation(value)  # getexif() took its orientation
        elif tag not in LAYOUT_TAGS:
            tags[tag] = value
    params = {}
    if tags:
        params["tiff_tags"] = tags if _writable(tags) else metadata.UNWRITABLE
    if directories or unreadable:
        params["exif"] = directories if _writable(directories) and not unreadable else metadata.UNWRITABLE
    return params


def _sub_directory(exif: Image.Exif, tag: int) -> dict:
    value = dict(exif.get_ifd(tag))
    if tag == ExifTags.IFD.Exif and ExifTags.IFD.Interop in value:
        value[ExifTags.IFD.Interop] = dict(exif.get_ifd(ExifTags.IFD.Interop))
    return value


def _writable(part: dict) -> bool:
    return metadata.exif_bytes(lambda: tiff_exif(part)) is not metadata.UNWRITABLE


def tiff_exif(*parts: dict) -> bytes:
    """The tags and directories of `parts` as EXIF bytes for the TIFF writer, under a classic TIFF
    header (Pillow's bytes for a BigTIFF's own directory have a BigTIFF header that its TIFF
    writer cannot read back: struct.error)."""
    exif = Image.Exif()
    for part in parts:
        for tag, value in part.items():
            exif[tag] = value
    return exif.tobytes()


def _dpi(tags) -> tuple | None:
    """A page's resolution in dots per inch, as Pillow's reader works it out; None without one,
    or in no unit."""
    x, y, unit = tags.get(X_RESOLUTION), tags.get(Y_RESOLUTION), tags.get(RESOLUTION_UNIT)
    if not x or not y or unit not in DPI_UNITS:
        return None
    return float(x) * DPI_UNITS[unit], float(y) * DPI_UNITS[unit]


def _page_number(page: dict) -> tuple[int, int] | None:
    """The PageNumber a page is written with, for ifd.with_page_numbers: its source's."""
    value = page.get("tiff_tags", {}).get(ifd.PAGE_NUMBER)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and 0 <= v <= 0xFFFF for v in value):
        return value
    return None


FORMAT = Tiff()
