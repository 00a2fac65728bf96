"""Flip pictures: bytes in, bytes out. No web framework here, so it can be tested and
benchmarked on its own."""

from __future__ import annotations

import contextlib
import io
import struct
import time
import zlib
from dataclasses import dataclass, field, replace

import pillow_heif
from PIL import ExifTags, Image, ImageMode, ImageSequence, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from service import gif, jpeg, jpeg_lossless, tiff

# HEIC through pillow-heif (libheif, libde265 and x265 in its wheels); AVIF is Pillow's own
# (libavif), before HEIF in MEDIA_TYPES so that it reads the AVIF files both would accept. Depth
# and auxiliary images are not read: they would not be flipped with the picture.
pillow_heif.register_heif_opener(depth_images=False, aux_images=False)

# Pillow format name -> media type; the only formats read and written, tried in this order.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
}
DIRECTIONS = {
    "vertical": Image.Transpose.FLIP_TOP_BOTTOM,
    "horizontal": Image.Transpose.FLIP_LEFT_RIGHT,
}
# What a viewer does for each EXIF orientation; ImageOps.exif_transpose uses the same table.
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ORIENTATION = ExifTags.Base.Orientation
# The transposes that turn a picture a quarter: width and height change places.
QUARTER_TURNS = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                           Image.Transpose.ROTATE_270})
# Flipped.path: the JPEG's DCT coefficients moved (nothing decoded), or the pixels decoded and
# written again.
LOSSLESS, RE_ENCODED = "lossless", "re-encoded"
LOSSY_WEBP_QUALITY = 90
# For lossless WebP, "quality" is the encoder's effort: at 50 a 3 MP photo's file came out as large
# as at 100 (within 0.1 %) in half the CPU, and a 4 MP picture of noise took 1.4 s instead of 12.
WEBP_LOSSLESS_EFFORT = 50
# A WebP holds a few chunks, an animation about 3 a frame (ANMF and the 1 or 2 inside it): this
# is over 6,000 frames, and walking them takes about 20 ms.
WEBP_MOST_CHUNKS = 20_000
# HEIC and AVIF keep no quality setting to reuse. At 90, two flips of a quality-90 photo stay
# above 50 dB PSNR for HEIC and near 40 dB for AVIF, whose colour conversion costs more than its
# quality (tests/test_imaging.py).
LOSSY_HEIF_QUALITY = LOSSY_AVIF_QUALITY = 90
# x265's fastest preset: a 12 MP photo in 2 s instead of 13 s at libheif's default ("slow"),
# for files as large (a grainy photo) to 40 % larger (a smooth one); libaom's speed 8 instead of
# 6: 0.8 s instead of 4.8 s, 4 % larger. Measured on a 2-core machine: the default
# FLIP_MAX_SECONDS is 10.
HEIF_PRESET = "ultrafast"
# HEIC written as a grid of tiles of this size, as iPhones write it: x265 encodes one tile at a
# time, in a fifth of the memory of the whole picture at once (and a third faster).
HEIF_TILE = 512
# The pixel limits are set for a flip holding two copies of a picture at 4 bytes a pixel, the
# decoded one and the flipped one (service/memory.py works out a replica's memory from them).
# The HEIC, AVIF and WebP encoders hold more: at its peak, a flip of a 12 MP photo held this many
# bytes a pixel ((format, with alpha) -> bytes, lossless WebP apart; tests/test_imaging.py measures
# it). HEIC with alpha is written as one image, not tiles. Such a picture's pixels count that many
# times 1/8 each against FLIP_MAX_PIXELS and FLIP_MAX_TOTAL_PIXELS, so that the memory worked out
# holds.
LIMITS_BYTES_PER_PIXEL = 8
# Pillow keeps an 8-byte pointer a row in each of the two copies (a quarter turn's has a row a
# column): a flip of a picture of one column and 10 million rows held 172 MiB at its peak, 18
# bytes a row. Each row counts for this much too.
ROW_BYTES = 16
LOSSLESS_WEBP = "lossless WEBP"
# A JPEG's coefficients take 2 bytes a sample: TurboJPEG's lossless transform holds the source's
# and the flipped ones, a progressive decode holds them beside the decoded picture. 4:2:0 colour
# (1.5 samples a pixel) fits the 8 bytes the limits count a pixel for (6.6 lossless, 8.0
# re-encoded, at 24 MP); 4:4:4 colour and full-resolution CMYK held 13 and 17 lossless (10.4 and
# 12.6 re-encoded): a 50 MP CMYK JPEG of 2.3 MB held 790 MB.
JPEG_3_SAMPLES, JPEG_4_SAMPLES = "JPEG of 3 samples a pixel", "JPEG of 4 samples a pixel"
# A run-length coded BMP is decoded by Pillow in Python, a run at a time: 30 to over 100 ns a
# pixel against a JPEG's 8, and a 124-byte one of 49 million pixels took 7 s. Its pixels count
# this many times against the pixel limits, for time, not memory.
RLE_BMP = "run-length BMP"
# An LZMA-compressed TIFF is written back with LZMA: libtiff's xz encoder takes 70 to 110 ns a
# pixel, in one call the deadline cannot stop (a 439 KB TIFF of 50 MP took 5.5 s). Likewise.
LZMA_TIFF = "LZMA-compressed TIFF"
SLOW_PIXEL_WEIGHTS = {RLE_BMP: 8, LZMA_TIFF: 8}
BMP_RLE_COMPRESSIONS = (1, 2)  # RLE8, RLE4: the compression field of the BMP's info header
PEAK_BYTES_PER_PIXEL = {("HEIF", False): 10, ("HEIF", True): 45, ("AVIF", False): 32, ("AVIF", True): 36,
                        ("WEBP", False): 24, ("WEBP", True): 52, (LOSSLESS_WEBP, False): 46, (LOSSLESS_WEBP, True): 54,
                        (JPEG_3_SAMPLES, False): 13, (JPEG_4_SAMPLES, False): 17}
ALPHA_MODES = frozenset({"RGBA", "LA", "RGBa", "La", "PA"})
AVIF_SPEED = 8
HEIF_ITEM_TYPE_BYTES = 4  # a metadata item's type is a four-character code
# A PNG's chunks that a flip keeps as they are: colour space (Pillow's writer leaves out sRGB beside
# an ICC profile) and text. Text keywords under which ImageMagick keeps an EXIF, and the XMP's.
PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
PNG_KEPT_CHUNKS = frozenset({b"cHRM", b"cICP", b"gAMA", b"sRGB", b"sBIT"}) | PNG_TEXT_CHUNKS
PNG_RAW_EXIF = b"Raw profile type exif"  # the text in which Pillow's getexif() reads an EXIF
PNG_EXIF_KEYWORDS = frozenset({PNG_RAW_EXIF, b"Raw profile type APP1"})
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\0\0\0\0IEND\xaeB`\x82"
# _png_params's text chunks after the pixels, for _write (not Pillow's writer) to put there.
PNG_TEXT_AFTER_PIXELS = "text_after_pixels"
# Before its pixels a PNG has a handful of chunks (header, palette, colour space, text): 24 MB of
# empty ones take Pillow past the 10 s deadline to read; 20,000 are walked in about 20 ms.
PNG_MOST_CHUNKS = 20_000
# In all, its pixels' IDAT chunks too: a few thousand in 25 MB (libpng writes 8 KiB each, Pillow
# 64 KiB). 2 million empty ones (24 MB) took Pillow 3.2 s to decode; 100,000 take 0.16 s.
PNG_MOST_ALL_CHUNKS = 100_000
# A JPEG has tens of segments besides its scans and their tables, a few hundred with a long XMP
# or ICC profile split over many (jpeg.counts). A
# flip of one with 100,000 empty comments (400 KB) takes 13 s, most of it in TurboJPEG's transform
# (its marker list grows by a walk to its end), one of 400,000 over 100 s; of 10,000, 0.16 s.
JPEG_MOST_SEGMENTS = 10_000
# A GIF has 2 or 3 blocks a frame (graphic control, image, maybe a comment) and a few more: this
# is over 6,000 frames, walked in about 20 ms; 25 MB of empty extensions would take seconds.
GIF_MOST_BLOCKS = 20_000
# And their sub-blocks: a 25 MB GIF's pixels in the usual 255-byte sub-blocks have 100,000. A
# comment of 3 million one-byte sub-blocks (6 MB) took Pillow 3.9 s to read, 12 million the deadline.
GIF_MOST_SUB_BLOCKS = 200_000
# Deflate's best: 258 bytes from one match, whose length and distance codes take a bit each.
DEFLATE_MOST_RATIO = 1032
# Samples a pixel by PNG colour type: grey, RGB, palette, grey and alpha, RGBA.
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
JPEG_DECODER_BLOCK = 16 * 1024
# Pillow reports damaged data through any of these, depending on the plugin: struct.error for a
# TIFF or EXIF directory cut short, RuntimeError for a TIFF libtiff cannot start decoding.
PILLOW_DATA_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error, RuntimeError,
)
# What Pillow's writers raise for metadata they cannot write: struct.error (a value that does not
# pack), RuntimeError (libtiff's "Error setting from dictionary", WebP's re-mux), ValueError and
# TypeError (tags Pillow refuses), AttributeError (a text tag stored as a number), OverflowError,
# OSError (an encoder's own failure).
PILLOW_WRITE_ERRORS = (OSError, ValueError, TypeError, AttributeError, RuntimeError, struct.error, OverflowError)

# The source's metadata a flip writes back, each under the name Flipped.dropped gives it, with
# the save parameter that carries it. When the writer refuses the picture with all of it, these
# are left out one at a time in this order, and the first whose absence lets the picture be
# written is the only one dropped; if no single one does, the first two, three... together. Only
# the last try, with none of them, fails as before: then the fault is in our own parameters (a
# bug, a ValueError or TypeError) or in the pixels (an encoder's OSError: a 400).
SOURCE_METADATA = {
    "exif": "exif",  # for a TIFF only its EXIF and GPS directories, the rest is "tiff_tags"
    "tiff_tags": "tiff_tags",
    "dpi": "dpi",
    "tiff_compression": "compression",
    "icc_profile": "icc_profile",
    "transparency": "transparency",
}
# Flipped.dropped's name for a picture of more than 8 bits a sample written at 8. Pillow decodes
# PNG's RGB, RGBA and grey with alpha, and TIFF's RGB, RGBA and CMYK, of 16 bits to its 8-bit modes,
# pillow-heif a HEIC of 10 or 12, and the writers write what was decoded; 16-bit grey (mode I;16)
# is decoded and written at 16.
HIGH_BIT_DEPTH = "bit_depth"
TIFF_BITS_PER_SAMPLE = 258
TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION, TIFF_RESOLUTION_UNIT = 282, 283, 296
# A resolution's unit -> the factor to dots per inch: none given (read as inches), inch, centimetre.
TIFF_DPI_UNITS = {None: 1, 2: 1, 3: 2.54}
TIFF_ICC_PROFILE = 34675
TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 322, 323
# A tile of up to this many pixels is no matter, whatever the picture's size (writers use 256 or
# 512 a side): a 313 KB TIFF of 16x16 pixels in one 46,336x46,336 tile held 2 GB as libtiff read it.
TIFF_ANY_TILE_PIXELS = 1024 * 1024
# The tags of a TIFF's first directory (what Pillow's getexif() gives for a TIFF) that describe
# how the source stored its pixels, not what the picture shows: the writer chooses its own.
# Written back from the source they would override the writer's layout (the source's width over a
# rotated picture's, 16 bits a sample over the 8 Pillow decoded to, a 2**32-entry ColorMap, a
# YCbCr photometric over RGB data) and libtiff refuses many of them. Resolution and the ICC
# profile are left out too: the dpi and icc_profile parameters carry them.
TIFF_XMP = 700
TIFF_LAYOUT_TAGS = frozenset({
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


def keep_image_memory(blocks: int) -> None:
    """Let Pillow reuse up to `blocks` freed 16 MiB image blocks instead of returning them at
    once (16 hold a 24 MP photo and its flip).

    By default every picture maps and faults in its ~200 MB afresh, and the heap creeps under
    steady load; keeping the blocks held a replica's memory flat over minutes and flipped a few
    per cent faster (see the README's Reliability section). Costs `blocks` x 16 MiB when idle.
    """
    Image.core.set_blocks_max(blocks)


class ImageError(Exception):
    """A picture this module refuses; the message is safe to show to a client."""


class NotAnImage(ImageError):
    """Not a picture, or one that is truncated or corrupt."""


class UnsupportedFormat(ImageError):
    """A real picture in a format outside MEDIA_TYPES."""


class TooLarge(ImageError):
    """More pixels or frames than the limits allow."""


class TooCostly(ImageError):
    """A picture that would take more than the limits allow: more progressive scans than
    FLIP_MAX_SCANS, longer than FLIP_MAX_SECONDS to flip, or a flipped picture larger than the
    answer limit. Sending it again would not help."""


@dataclass(frozen=True)
class Limits:
    """What one picture may hold; the service builds them from its settings (service.config)."""

    max_pixels: int
    max_frames: int
    # All frames of an animation together, kept flipped until they are written (~4 bytes a
    # pixel): bounds the memory one request can take. (A GIF's are flipped one image at a time.)
    max_total_pixels: int
    # A JPEG's scans: the decoder walks every block of the picture once for each.
    max_scans: int = 2**63
    # The most a flip may take, checked as the picture's data is read and written and between
    # frames (so overrun by one decoder or encoder step at most).
    max_seconds: float = float("inf")
    # The largest answer: a picture whose flip would be larger (a compressed source written
    # back uncompressed) is refused rather than held in memory.
    max_answer_bytes: int = 2**63


# Only Pillow's own decompression-bomb guard: for callers that set no limits of their own.
NO_LIMITS = Limits(max_pixels=2**63, max_frames=2**63, max_total_pixels=2**63)


class Spans(dict):
    """Seconds spent in each part of a flip (decode, flip, encode), added up over frames."""

    @contextlib.contextmanager
    def timing(self, span: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self[span] = self.get(span, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class Flipped:
    data: bytes
    format: str
    width: int
    height: int
    frames: int
    spans: Spans = field(default_factory=Spans)
    # The source's metadata left out because the writer refused it (SOURCE_METADATA's names),
    # then HIGH_BIT_DEPTH when its samples of more than 8 bits were written at 8.
    dropped: tuple[str, ...] = ()
    path: str = RE_ENCODED  # LOSSLESS or RE_ENCODED
    # Why a JPEG was re-encoded rather than flipped losslessly ("not aligned", "asked"...); empty
    # for a lossless flip and for the other formats, which are always re-encoded.
    reason: str = ""

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def flip(data: bytes, direction: str = "vertical", limits: Limits = NO_LIMITS, lossless: bool = True) -> Flipped:
    """Flip the picture in `data` and encode it again in its own format.

    The EXIF orientation is applied with the flip, as the one transpose that does both, so the
    result is the flip of what a viewer shows, and no orientation tag is written back; each page
    of a TIFF has its own orientation, and its own transpose. Flipped's width and height are the
    first frame's. At most two whole copies of a frame's pixels exist at once: the decoded one and
    the transposed one, and the decoded one is freed before the encoder starts.

    A JPEG is transposed in the DCT domain (service.jpeg_lossless, nothing decoded, nothing
    lost) unless `lossless` is False or that cannot be done; Flipped.path and Flipped.reason
    say which. Either way the pixel and scan limits are checked from the header first. A GIF is
    flipped image by image, each with its own palette and disposal (_flip_gif).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, not {direction!r}")
    if not data:
        raise NotAnImage("the body is empty: send a picture")
    deadline = _Deadline(limits.max_seconds)
    spans = Spans()
    with spans.timing("decode"):
        im, memory_format = _open(data, limits, deadline)
    # MPO (a phone's JPEG with a preview frame appended) is written back as its main JPEG.
    fmt = "JPEG" if im.format == "MPO" else im.format
    # Before getexif(), which decodes a PNG: decoding empties the tile that tells a PNG's depth.
    narrowed = _narrowed_to_8_bits(im)
    try:
        operation = _operation(im, direction, spans)
        reason = ""
        if fmt == "JPEG":
            if not lossless:
                reason = "asked"
            else:
                flipped = _flip_jpeg_losslessly(data, im.size, operation, limits, spans, deadline)
                if isinstance(flipped, Flipped):
                    return flipped
                reason = flipped
        if fmt == "GIF":  # no orientation: Pillow reads neither EXIF nor XMP from a GIF
            return _flip_gif(im, data, DIRECTIONS[direction], limits, spans, deadline)
        # The first frame's info holds the file-wide settings; seeking replaces it.
        params = _save_params(im, fmt, data, turned=operation in QUARTER_TURNS)
        frames, durations, narrowed_frames, later_pages = _flip_frames(im, operation, direction, limits, fmt, spans,
                                                                       deadline, memory_format, data)
        im.close()  # the decoded pixels: the encoder needs only the flipped ones
        with _pillow_writing(im), spans.timing("encode"):
            written, dropped = _save(frames, durations, [params, *later_pages], fmt,
                                     lambda: _TimedWriter(deadline, limits.max_answer_bytes))
    finally:
        im.close()
    if narrowed or narrowed_frames:
        dropped = (*dropped, HIGH_BIT_DEPTH)
    first = frames[0]
    return Flipped(written, fmt, first.width, first.height, len(frames), spans, dropped, RE_ENCODED, reason)


def _operation(im: Image.Image, direction: str, spans: Spans) -> Image.Transpose | None:
    """The one transpose that applies the EXIF orientation of `im`'s current frame, then flips it
    in `direction`. Orientations outside 1-8 are ignored, as viewers ignore them.

    The orientation is taken out of the frame's EXIF, before its pixels are loaded: Pillow turns a
    TIFF page by it as it loads the page, and the transpose would turn it a second time."""
    with _pillow_reading(im), spans.timing("decode"):
        orientation = im.getexif().pop(ORIENTATION, 1)
    return compose(ORIENTATION_TRANSPOSE.get(orientation), DIRECTIONS[direction])


def _flip_jpeg_losslessly(data, size, operation, limits, spans, deadline) -> Flipped | str:
    """The JPEG transposed by `operation` in the DCT domain, or why it cannot be (Flipped.reason).

    tjTransform is one C call that the deadline cannot interrupt: the scan limit, checked before
    (_open), bounds its work, and the deadline is checked on both sides. Data TurboJPEG finds
    damaged goes on to Pillow, which refuses what is truly corrupt and reads what it tolerates
    (junk before a marker) as it always did."""
    deadline.check()
    try:
        with spans.timing("flip"):
            written = jpeg_lossless.transform(data, operation)
    except jpeg_lossless.Unavailable:
        return "library missing"
    except jpeg_lossless.NotPerfect as exc:
        return exc.reason
    except jpeg_lossless.DamagedJpeg:
        return "damaged"
    deadline.check()
    if len(written) > limits.max_answer_bytes:
        raise TooCostly(_answer_too_large(limits.max_answer_bytes))
    width, height = size[::-1] if operation in QUARTER_TURNS else size
    return Flipped(written, "JPEG", width, height, 1, spans, path=LOSSLESS)


def _flip_gif(im, data, operation, limits, spans, deadline) -> Flipped:
    """The GIF with each image's rectangle of pixels flipped and moved to its mirrored place on
    the screen (service.gif), its colour table, transparency, disposal and timing, and the file's
    extensions, kept byte for byte: every frame a viewer composites is the source's, flipped.

    Pillow's writer could not do that: it takes composited frames, quantises each to one palette
    (a frame composited from several has more than 256 colours) and disposes of them its own way.
    One image's pixels are held at a time, decoded and flipped; the frame and total pixel limits
    count each frame's whole screen, as for the other animations, checked before any decoding."""
    try:
        source = gif.read(data)
        width, height = source.screen
        frames = 0
        with spans.timing("decode"):
            for walked, block in enumerate(source.blocks(), 1):
                deadline.check()
                if walked > GIF_MOST_BLOCKS:
                    raise TooCostly(f"the GIF has more than {GIF_MOST_BLOCKS:,} blocks, the most a picture may have "
                                    "(an animation has 2 or 3 a frame): each costs time before any pixel")
                if isinstance(block, gif.ImageBlock):
                    frames += 1
                    if frames > limits.max_frames:
                        raise TooLarge(f"the animation has more than {limits.max_frames} frames")
                    # Beyond the logical screen, an image widens it, as Pillow reads it: the flip is within it.
                    width, height = max(width, block.left + block.width), max(height, block.top + block.height)
        if not frames:
            raise NotAnImage("the GIF has no image")
        if max(width, height) > gif.LARGEST_SIDE:
            raise TooLarge(f"the GIF's images reach {width}x{height}, beyond the largest screen a GIF can have "
                           f"({gif.LARGEST_SIDE:,} a side)")
        if _check_pixels((width, height), im.mode, limits, "GIF") * frames > limits.max_total_pixels:
            raise TooLarge(f"the animation's frames add up to more than {limits.max_total_pixels:,} pixels")
        out = _TimedWriter(deadline, limits.max_answer_bytes)
        out.write(source.header_for(width, height))
        for block in source.blocks():
            deadline.check()
            # Extensions are written as they are; a plain text one's grid, which no viewer draws, is not moved.
            out.write(_flip_gif_image(im, block, operation, (width, height), spans).block()
                      if isinstance(block, gif.ImageBlock) else block)
    except gif.Damaged as exc:
        raise NotAnImage(f"the GIF data is damaged or truncated: {exc}") from exc
    out.write(bytes([gif.TRAILER]))
    return Flipped(out.getvalue(), "GIF", width, height, frames, spans)


def _flip_gif_image(im, image: gif.ImageBlock, operation, screen, spans) -> gif.ImageBlock:
    """The image with its pixels flipped, at its mirrored place on the screen; the colour indices
    are decoded and encoded by Pillow, unchanged, and its colour table is kept."""
    # Pillow reads no orientation from a GIF: the operation is one of the flips.
    if operation == Image.Transpose.FLIP_LEFT_RIGHT:
        moved = replace(image, left=screen[0] - image.left - image.width)
    elif operation == Image.Transpose.FLIP_TOP_BOTTOM:
        moved = replace(image, top=screen[1] - image.top - image.height)
    else:
        raise ValueError(f"a GIF is only flipped, not turned: {operation!r}")
    if not image.width or not image.height:
        return moved
    with _pillow_reading(im), Image.open(io.BytesIO(image.alone()), formats=["GIF"]) as alone:
        with spans.timing("decode"):
            alone.load()
        with spans.timing("flip"):
            flipped = alone.transpose(operation)
    flipped.info = {}  # the transparency and timing stay in the source's own extension
    written = io.BytesIO()
    with _pillow_writing(im), spans.timing("encode"):
        flipped.save(written, "GIF", optimize=False, interlace=bool(image.flags & gif.INTERLACED))
    (encoded,) = [block for block in gif.read(written.getvalue()).blocks() if isinstance(block, gif.ImageBlock)]
    # Pillow does not interlace an image under 16 pixels wide or high.
    flags = image.flags & ~gif.INTERLACED | encoded.flags & gif.INTERLACED
    return replace(moved, flags=flags, pixels=encoded.pixels)


def _answer_too_large(max_bytes: int) -> str:
    return (f"the flipped picture would be over {max_bytes:,} bytes, the largest answer; "
            "send it in a format that compresses it")


def compose(first: Image.Transpose | None, then: Image.Transpose | None) -> Image.Transpose | None:
    """The one transpose (None: leave it as it is) that does `first`, then `then`: the eight
    are a group, so any two make one."""
    return _COMPOSED[first, then]


def _composition_table() -> dict:
    # Worked out on a 3x2 picture of six different pixels, where each of the eight differs.
    probe = Image.frombytes("L", (3, 2), bytes(range(6)))
    every = [None, *Image.Transpose]

    def applied(im, operation):
        return im if operation is None else im.transpose(operation)

    table = {}
    for first in every:
        for then in every:
            target = applied(applied(probe, first), then)
            (table[first, then],) = [op for op in every if applied(probe, op).size == target.size
                                     and applied(probe, op).tobytes() == target.tobytes()]
    return table


_COMPOSED = _composition_table()


class _Deadline:
    """The moment a flip gives up: checked wherever the picture's bytes are read or written."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise TooCostly(f"the picture took longer than {self.seconds:g} s to flip, the most a flip may "
                            "take: it was given up, and would take as long again")


class _TimedReader(io.BytesIO):
    """The picture's bytes, for Pillow's decoders, which read them a block at a time."""

    def __init__(self, data: bytes, deadline: _Deadline):
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return super().read(size)


class _TimedWriter(io.BytesIO):
    """Where the encoders write, a block at a time: no later than the deadline, no more than the
    answer limit."""

    def __init__(self, deadline: _Deadline, max_bytes: int):
        super().__init__()
        self.deadline = deadline
        self.max_bytes = max_bytes

    def write(self, data) -> int:
        self.deadline.check()
        if self.tell() + len(data) > self.max_bytes:
            raise TooCostly(_answer_too_large(self.max_bytes))
        return super().write(data)


@contextlib.contextmanager
def _pillow_writing(im: Image.Image):
    """Around the encoder: only an encoder's own failure (OSError) is the picture's doing (what
    it carries into the file: a profile, a palette). A ValueError or TypeError here comes from
    the parameters we chose, a bug, and goes on to the 500 handler."""
    try:
        yield
    except OSError as exc:
        raise NotAnImage(f"the {im.format} picture cannot be written back: {exc}") from exc


@contextlib.contextmanager
def _pillow_reading(im: Image.Image):
    """Around Pillow's own calls only: their errors mean damaged data, not a bug of ours.

    A MemoryError here is damaged data too: the picture's header is within the pixel limit by
    then (checked before any decoding), so what it legitimately needs is bounded (50 MP x 4 bytes
    by default) and the replica is sized for it; Pillow raises MemoryError for sizes its overflow
    guards refuse and for allocations sized from other damaged fields (a strip or tile claiming
    gigabytes). Retrying such a picture never helps, so it is not the 503 of a replica short of
    memory (which, in a container, the kernel's OOM killer ends instead)."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise TooLarge(str(exc)) from exc
    except PILLOW_DATA_ERRORS as exc:
        raise NotAnImage(f"the {im.format} data is damaged or truncated: {exc}") from exc
    except MemoryError as exc:
        raise NotAnImage(f"the {im.format} data is damaged: it claims more memory than its size needs") from exc


# The sample precisions the JPEG standard has besides 8 (12 for DCT coding, 2 to 16 for lossless
# coding): Pillow reads 8-bit JPEG only.
JPEG_UNREAD_PRECISIONS = frozenset(range(2, 17)) - {8}
# Enough of a file for Pillow's plugins to recognise its header. Given more, some read on: EPS's
# scans a whole body line by line (25 MB: about 20 s) only to name a format that gets a 415.
IDENTIFY_BYTES = 64 * 1024


def identify(data: bytes) -> str | None:
    """The Pillow format name of `data` from its first IDENTIFY_BYTES, or None when no plugin
    recognises it."""
    try:
        with Image.open(io.BytesIO(data[:IDENTIFY_BYTES])) as im:
            return im.format
    except Exception:  # any plugin may fail in its own way on foreign data
        return None


def _open(data: bytes, limits: Limits, deadline: _Deadline) -> tuple[Image.Image, str]:
    """The picture opened, its header checked against the limits; and its memory format."""
    _check_directories(tiff.counts(data, limits.max_frames + 1), "the TIFF's pages have")
    scans, segments = jpeg.counts(data, limits.max_scans, JPEG_MOST_SEGMENTS)
    if scans > limits.max_scans:
        raise TooCostly(f"the JPEG has more than {limits.max_scans:,} scans, the most a picture may have "
                        "(a progressive JPEG has about 10): each costs a pass over every pixel")
    if segments > JPEG_MOST_SEGMENTS:
        raise TooCostly(f"the JPEG has more than {JPEG_MOST_SEGMENTS:,} segments besides its scans and their "
                        "tables (metadata, comments), the most a picture may have: reading each costs time")
    if data.startswith(b"GIF") and gif.sub_blocks(data, GIF_MOST_SUB_BLOCKS) > GIF_MOST_SUB_BLOCKS:
        raise TooCostly(f"the GIF has more than {GIF_MOST_SUB_BLOCKS:,} sub-blocks, the most a picture may have (a 25 "
                        "MB GIF's pixels have 100,000): each costs time before any pixel")
    before_pixels, in_all = _png_chunk_counts(data) if data.startswith(PNG_SIGNATURE) else (0, 0)
    if before_pixels > PNG_MOST_CHUNKS:
        raise TooCostly(f"the PNG has more than {PNG_MOST_CHUNKS:,} chunks before its pixels, the most a picture may "
                        "have (most have a handful): each costs time before any pixel")
    if in_all > PNG_MOST_ALL_CHUNKS:
        raise TooCostly(f"the PNG has more than {PNG_MOST_ALL_CHUNKS:,} chunks, the most a picture may have (most "
                        "have a few thousand at most): each costs time to read")
    try:
        im = Image.open(_TimedReader(data, deadline), formats=list(MEDIA_TYPES))
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"the picture has too many pixels: {exc}") from exc
    except UnidentifiedImageError:
        bits = jpeg.precision(data)
        if bits in JPEG_UNREAD_PRECISIONS:
            raise UnsupportedFormat(f"{bits}-bit JPEG pictures are not supported; send an 8-bit JPEG") from None
        other = identify(data)
        if other is not None:
            raise UnsupportedFormat(
                f"{other} pictures are not supported; send one of {', '.join(MEDIA_TYPES)}"
            ) from None
        raise NotAnImage("the body is not a picture this service can read") from None
    except PILLOW_DATA_ERRORS as exc:
        raise NotAnImage(f"the picture's header is damaged: {exc}") from exc
    if im.format != "TIFF":  # a TIFF's EXIF is its first page's directories, counted above
        for exif in _exifs_of(im, data):
            _check_directories(tiff.counts(exif, directories=2), "the picture's EXIF has")
    memory_format = _memory_format(im, data)
    _check_pixels(im.size, im.mode, limits, memory_format)
    least = _least_bytes(im.format, data)
    if len(data) < least:
        im.close()
        raise NotAnImage(f"the {im.format} header says {im.width}x{im.height} pixels, more than its {len(data):,} "
                         f"bytes can hold (at least {least:,}): the data is truncated or the header damaged")
    if im.format in ("JPEG", "MPO"):
        # The decoder gets the data in smaller blocks, so that the deadline is looked at more
        # often: a block of a progressive JPEG may hold hundreds of scans. (1 % of a decode.)
        im.decodermaxblock = JPEG_DECODER_BLOCK
    return im, memory_format


def _check_directories(held: tiff.Counts, which_have: str) -> None:
    """Refuse TIFF directories (a TIFF's pages, or an EXIF) that cost too much to read: Pillow
    makes a Python object of every number, and reads every entry in a loop turn or more."""
    if held.largest_tag > tiff.MOST_VALUES:
        raise TooCostly(f"{which_have} a tag of {held.largest_tag:,} numbers (a TIFF's strip or tile offsets), more "
                        f"than the {tiff.MOST_VALUES:,} a picture may have: reading each costs memory before any pixel")
    if held.entries > tiff.MOST_ENTRIES:
        raise TooCostly(f"{which_have} more than {tiff.MOST_ENTRIES:,} tags in all, the most a picture may have "
                        "(a TIFF page or an EXIF has tens): reading each costs time before any pixel")
    if held.numbers > tiff.MOST_NUMBERS:
        raise TooCostly(f"{which_have} tags of more than {tiff.MOST_NUMBERS:,} numbers in all (a fraction counting "
                        "10 each), the most a picture may have: reading each costs time before any pixel")


def _exifs_of(im: Image.Image, data: bytes) -> list[bytes]:
    """The EXIF Pillow's getexif() may read, without its "Exif" header: none, or one; for a PNG
    each eXIf chunk and ImageMagick's hex text of one, before the pixels or after them (where
    Pillow reads them once it has decoded the pixels)."""
    exifs = [im.info["exif"]] if im.info.get("exif") else []
    if im.format == "PNG":
        read = im.info.get(PNG_RAW_EXIF.decode())  # Pillow's reading of the text before the pixels
        texts = [read] if isinstance(read, str) else []
        for kind, start, length, after_pixels in _png_chunks(data):
            if kind == b"eXIf":
                exifs.append(data[start : start + length])
            elif after_pixels and kind in PNG_TEXT_CHUNKS and data.startswith(PNG_RAW_EXIF + b"\0", start):
                texts.append(_png_text(kind, data[start : start + length]))
        for text in texts:
            with contextlib.suppress(ValueError):  # not hex: Pillow fails on it, and reads nothing
                exifs.append(bytes.fromhex("".join(text.split("\n")[3:])))
    return [exif.removeprefix(jpeg_lossless.EXIF_HEADER) for exif in exifs]


def _png_text(kind: bytes, body: bytes) -> str:
    """A PNG text chunk's text, decompressed as Pillow decompresses it; "" when it cannot be read."""
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


def _least_bytes(fmt: str, data: bytes) -> int:
    """The fewest bytes a file of its header's pixels can be, for the formats whose decoders would
    otherwise make up the pixels the data lacks (grey or black) without a word; else 0."""
    if fmt in ("JPEG", "MPO"):
        return jpeg.least_bytes(data)
    if fmt == "PNG" and data[12:16] == b"IHDR":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        bits = data[24] * PNG_CHANNELS.get(data[25], 1)
        return width * height * bits // 8 // DEFLATE_MOST_RATIO
    return 0


def _memory_format(im: Image.Image, data: bytes) -> str:
    """The format as PEAK_BYTES_PER_PIXEL and SLOW_PIXEL_WEIGHTS name it: WebP's lossless encoder
    holds more than its lossy one, a JPEG of more samples a pixel more than one of fewer, a
    run-length BMP or an LZMA TIFF takes longer than another."""
    if im.format == "WEBP" and _webp_is_lossless(data):
        return LOSSLESS_WEBP
    if im.format == "BMP" and int.from_bytes(data[30:34], "little") in BMP_RLE_COMPRESSIONS:
        return RLE_BMP
    if im.format == "TIFF" and im.info.get("compression") == "lzma":
        return LZMA_TIFF
    if im.format in ("JPEG", "MPO"):
        samples = jpeg.samples_per_pixel(data)
        return JPEG_4_SAMPLES if samples > 3 else JPEG_3_SAMPLES if samples > 2 else im.format
    return im.format


def _check_pixels(size: tuple[int, int], mode: str, limits: Limits, memory_format: str,
                  turned: bool = False) -> float:
    """Refuse from the header alone, before anything is decoded; else the pixels a picture of
    `size` and `mode` counts for against the limits (pixel_weight, and its rows: a quarter turn's
    copy has a row a column)."""
    width, height = size
    weight = pixel_weight(memory_format, mode)
    rows = (height + (width if turned else height)) / 2
    counted = width * height * weight + rows * ROW_BYTES / LIMITS_BYTES_PER_PIXEL
    if width * height * weight > limits.max_pixels:
        alpha = " with alpha" if mode in ALPHA_MODES else ""
        cost = "time" if memory_format in SLOW_PIXEL_WEIGHTS else "memory"
        heavier = (f" for {memory_format} pictures{alpha}: flipping them takes {weight:g} times the {cost} a pixel"
                   if weight > 1 else "")
        raise TooLarge(
            f"the picture is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {int(limits.max_pixels / weight):,}{heavier}"
        )
    if counted > limits.max_pixels:
        raise TooLarge(
            f"the picture is {width}x{height}: its {height:,} rows{f' and {width:,} once turned' if turned else ''} "
            "cost as much memory as "
            f"{int(counted - width * height * weight):,} more pixels, over the limit of {limits.max_pixels:,}"
        )
    return counted


def pixel_weight(memory_format: str, mode: str) -> float:
    """How many pixels each of a picture's counts for against the pixel limits (PEAK_BYTES_PER_PIXEL,
    SLOW_PIXEL_WEIGHTS)."""
    peak = PEAK_BYTES_PER_PIXEL.get((memory_format, mode in ALPHA_MODES), LIMITS_BYTES_PER_PIXEL)
    return max(1.0, peak / LIMITS_BYTES_PER_PIXEL, SLOW_PIXEL_WEIGHTS.get(memory_format, 1))


def _flip_frames(im, operation, direction, limits, fmt, spans, deadline, memory_format, data):
    """Every frame transposed by `operation` (None: copied as it is), but a TIFF's later pages, each
    by its own orientation and the flip in `direction`; whether any of them was decoded from more
    than 8 bits a sample to 8 (_narrowed_to_8_bits); and a TIFF's later pages' own metadata."""
    frames, durations, later_pages = [], [], []
    total_pixels = 0
    narrowed = False
    for index, frame in enumerate(_pillow_frames(im, spans)):
        if fmt == "JPEG" and index:
            break
        if fmt == "TIFF" and index:
            operation = _operation(frame, direction, spans)  # each page's directory has its own
        if index >= limits.max_frames:
            raise TooLarge(f"the animation has more than {limits.max_frames} frames")
        if fmt == "TIFF" and index:
            later_pages.append(_later_page_params(frame, data, turned=operation in QUARTER_TURNS))
        page_format = _memory_format(frame, data) if fmt == "TIFF" else memory_format  # each page's compression
        total_pixels += _check_pixels(frame.size, frame.mode, limits, page_format, turned=operation in QUARTER_TURNS)
        if total_pixels > limits.max_total_pixels:
            raise TooLarge(
                f"the animation's frames add up to more than {limits.max_total_pixels:,} pixels"
            )
        if fmt == "TIFF":
            _check_tiles(frame)
        deadline.check()
        narrowed = narrowed or _narrowed_to_8_bits(frame)
        with _pillow_reading(im):
            with spans.timing("decode"):
                frame.load()
            deadline.check()
            with spans.timing("flip"):
                flipped = frame.copy() if operation is None else frame.transpose(operation)
        durations.append(frame.info.get("duration"))  # WebP sets it only once loaded
        frames.append(flipped)
    return frames, durations, narrowed, later_pages


def _check_tiles(page) -> None:
    """Refuse a TIFF page whose tiles are larger than the page (its sides rounded up to 16, as a
    tile's are) and than TIFF_ANY_TILE_PIXELS: libtiff decodes a tile at a time into a buffer of
    the tile's size, which the page's pixels do not count for."""
    width, length = page.tag_v2.get(TIFF_TILE_WIDTH), page.tag_v2.get(TIFF_TILE_LENGTH)
    if not width or not length:
        return
    page_pixels = -(-page.width // 16) * 16 * -(-page.height // 16) * 16
    if width * length > max(page_pixels, TIFF_ANY_TILE_PIXELS):
        raise TooCostly(f"the TIFF's {width:,}x{length:,} tiles are larger than its {page.width:,}x{page.height:,} "
                        "picture: decoding one costs memory its pixels do not count for")


def _later_page_params(page, data, turned) -> dict:
    """A TIFF's later page's own metadata (_save_params), which its writer would otherwise take
    from the first page's; its EXIF and GPS directories _UNWRITABLE, and not read: Pillow's writer
    leaves a later page's pointers to them wrong (AppendingTiffWriter moves only the offsets of its
    pixels), and tiff.counts does not count them."""
    return _save_params(page, "TIFF", data, turned, later_page=True)


def _narrowed_to_8_bits(frame: Image.Image) -> bool:
    """Whether the frame `frame` is at has more than 8 bits a sample that are decoded to an 8-bit
    mode, from its header: a PNG's rawmode ("RGB;16B"; its tile is emptied once the frame is
    decoded), a TIFF page's BitsPerSample, a HEIC's bit depth."""
    if frame.format == "HEIF":
        return frame.info.get("bit_depth", 8) > 8
    if frame.format == "PNG":
        sixteen_bits = any(";16" in tile.args for tile in frame.tile)
    elif frame.format == "TIFF":
        sixteen_bits = 16 in frame.tag_v2.get(TIFF_BITS_PER_SAMPLE, ())
    else:
        return False
    return sixteen_bits and ImageMode.getmode(frame.mode).typestr[-1] == "1"  # not I;16, I or F


def _pillow_frames(im: Image.Image, spans: Spans):
    """The frames of `im`; seeking to the next one decodes data, so its errors are Pillow's."""
    frames = iter(ImageSequence.Iterator(im))
    while True:
        with _pillow_reading(im), spans.timing("decode"):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _exif_params(im: Image.Image, fmt: str, turned: bool, read_directories: bool = True) -> dict:
    """The source's EXIF to write back, without the orientation tag (the flip applies it), and with
    its PixelXDimension and PixelYDimension swapped if the flip `turned` the picture a quarter.

    For a TIFF, Pillow's getexif() is the page's directory: its layout tags are left out
    (TIFF_LAYOUT_TAGS), and what remains is kept in two parts that can be dropped apart, the
    descriptive tags ("tiff_tags": software, artist, copyright, XMP...) and the EXIF and GPS
    directories ("exif"), which Pillow's libtiff writer (any compressed TIFF) cannot write.
    Either part is _UNWRITABLE when Pillow read it but cannot turn it into bytes again; the
    directories are, unread, without `read_directories` (a TIFF's later page: _later_page_params)."""
    with _pillow_reading(im):
        exif = im.getexif()
    if not exif:
        return {}
    if ORIENTATION in exif:
        del exif[ORIENTATION]
    if fmt != "TIFF":
        serialise = (lambda: _pixel_dimensions_swapped(exif).tobytes()) if turned else exif.tobytes
        return {"exif": _exif_bytes(serialise)}
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
            except _EXIF_WRITE_ERRORS:
                unreadable = True
                continue
            if tag == ExifTags.IFD.Exif and turned:
                _swap_pixel_dimensions(value)
            if value:
                directories[tag] = value
        elif tag == TIFF_XMP and isinstance(value, bytes):
            tags[tag] = jpeg_lossless.xmp_without_orientation(value)  # getexif() took its orientation
        elif tag not in TIFF_LAYOUT_TAGS:
            tags[tag] = value
    params = {}
    if tags:
        params["tiff_tags"] = tags if _writable(tags) else _UNWRITABLE
    if directories or unreadable:
        params["exif"] = directories if _writable(directories) and not unreadable else _UNWRITABLE
    return params


def _pixel_dimensions_swapped(exif: Image.Exif) -> Image.Exif:
    """`exif`, changed: its Exif directory's PixelXDimension and PixelYDimension swapped."""
    if ExifTags.IFD.Exif in exif:
        _swap_pixel_dimensions(exif.get_ifd(ExifTags.IFD.Exif))
    return exif


def _swap_pixel_dimensions(directory: dict) -> None:
    """The Exif `directory`'s width and height swapped, those it has: a lone one takes the other's tag."""
    width, height = (directory.pop(tag, None) for tag in jpeg_lossless.PIXEL_DIMENSIONS)
    for tag, value in zip(jpeg_lossless.PIXEL_DIMENSIONS, (height, width), strict=True):
        if value is not None:
            directory[tag] = value


def _sub_directory(exif: Image.Exif, tag: int) -> dict:
    value = dict(exif.get_ifd(tag))
    if tag == ExifTags.IFD.Exif and ExifTags.IFD.Interop in value:
        value[ExifTags.IFD.Interop] = dict(exif.get_ifd(ExifTags.IFD.Interop))
    return value


# Pillow's errors on an EXIF that it read but cannot serialise: a value that does not pack, a
# directory cut short that it reads only then, a tag it lists but kept no value of.
_EXIF_WRITE_ERRORS = (*PILLOW_WRITE_ERRORS, EOFError, KeyError)
# A params value: the source carries this metadata, but it cannot be written (_save drops it).
_UNWRITABLE = object()


def _exif_bytes(serialise):
    try:
        return serialise()
    except _EXIF_WRITE_ERRORS:
        return _UNWRITABLE


def _writable(part: dict) -> bool:
    return _exif_bytes(lambda: _tiff_exif(part)) is not _UNWRITABLE


def _tiff_exif(*parts: dict) -> bytes:
    """The tags and directories of `parts` as EXIF bytes for the TIFF writer, under a classic TIFF
    header (Pillow's bytes for a BigTIFF's own directory have a BigTIFF header that its TIFF
    writer cannot read back: struct.error)."""
    exif = Image.Exif()
    for part in parts:
        for tag, value in part.items():
            exif[tag] = value
    return exif.tobytes()


def _save_params(im, fmt, data, turned, later_page=False) -> dict:
    params = {}
    for key in ("icc_profile", "dpi", "loop"):
        if im.info.get(key) is not None:
            params[key] = im.info[key]
    if fmt == "TIFF":
        # From the page's own directory: Pillow leaves an earlier page's profile and dpi in info
        # as it turns to a page without them, and reports a page without a resolution as 1x1 dpi.
        params.pop("icc_profile", None)
        params.pop("dpi", None)
        if im.tag_v2.get(TIFF_ICC_PROFILE):
            params["icc_profile"] = im.tag_v2[TIFF_ICC_PROFILE]
        if (dpi := _tiff_dpi(im.tag_v2)) is not None:
            params["dpi"] = dpi
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF"):
        params.update(_exif_params(im, fmt, turned, read_directories=not later_page))
    params.update(_FORMAT_PARAMS[fmt](im, data))
    return params


def _tiff_dpi(tags) -> tuple | None:
    """A TIFF page's resolution in dots per inch, as Pillow's reader works it out; None without
    one, or in no unit."""
    x, y, unit = tags.get(TIFF_X_RESOLUTION), tags.get(TIFF_Y_RESOLUTION), tags.get(TIFF_RESOLUTION_UNIT)
    if not x or not y or unit not in TIFF_DPI_UNITS:
        return None
    return float(x) * TIFF_DPI_UNITS[unit], float(y) * TIFF_DPI_UNITS[unit]


def _save(frames, durations, pages, fmt, new_output) -> tuple[bytes, tuple[str, ...]]:
    """The frames written in `fmt`, and the names of the source's metadata (SOURCE_METADATA)
    left out for the writer to accept them, in SOURCE_METADATA's order. `pages` holds the first
    frame's metadata (_save_params), then a TIFF's later pages' own.

    Tries with all of it, then without each single item, then without the first two, three...
    together, from every page; only the last try, with none of it, is let fail: what fails then
    is no fault of the source's metadata. What a page holds _UNWRITABLE is left out of it, and named."""
    unwritable = [name for name, key in SOURCE_METADATA.items() if any(page.get(key) is _UNWRITABLE for page in pages)]
    carried = [name for name, key in SOURCE_METADATA.items()
               if any(page.get(key) not in (None, _UNWRITABLE) for page in pages)]
    tries = []
    if carried:
        tries.append(())
    if len(carried) > 1:
        tries += [(name,) for name in carried]
        tries += [tuple(carried[:count]) for count in range(2, len(carried))]
    for left_out in tries:
        try:
            return _write(frames, durations, pages, left_out, fmt, new_output()), _ordered(unwritable, left_out)
        except PILLOW_WRITE_ERRORS:
            continue
    return _write(frames, durations, pages, carried, fmt, new_output()), _ordered(unwritable, carried)


def _ordered(*groups) -> tuple[str, ...]:
    names = {name for group in groups for name in group}
    return tuple(name for name in SOURCE_METADATA if name in names)


# What a TIFF's later page is written with when it has none of its own: nothing of the first page's.
_NO_PAGE_METADATA = {"exif": b"", "dpi": None, "icc_profile": None, "compression": "raw"}


def _write(frames, durations, pages, left_out, fmt, out: io.BytesIO) -> bytes:
    """One try at writing the frames without the `left_out` metadata (SOURCE_METADATA's names), nor
    what a page holds _UNWRITABLE, into `out`, a new buffer each try (a failed try leaves a partial
    file behind)."""
    left_out_keys = {SOURCE_METADATA[name] for name in left_out}
    sources = pages
    pages = [{key: value for key, value in page.items() if key not in left_out_keys and value is not _UNWRITABLE}
             for page in pages]
    page_numbers = [_page_number(page) for page in pages] if fmt == "TIFF" else []
    if fmt == "TIFF":
        for page in pages:
            parts = [page.pop(key) for key in ("tiff_tags", "exif") if key in page]
            if parts:
                page["exif"] = _tiff_exif(*parts)
    params = dict(pages[0])
    if len(frames) > 1:
        params.update(save_all=True, append_images=frames[1:])
        if all(d is not None for d in durations):
            params["duration"] = durations
    for index, frame in enumerate(frames):
        # A failed multi-frame save leaves its parameters on the frames it appended, and the
        # next try would take them up again.
        frame.encoderinfo = {}
        # A frame's info, copied from the source's by the transpose, is where writers look for
        # what they are not passed (the TIFF writer for compression and icc_profile, the PNG
        # writer for icc_profile and transparency, pillow-heif for a later image's own): what is
        # left out goes from there too.
        source = sources[index] if len(sources) == len(frames) else sources[0]
        for key in left_out_keys | {key for key, value in source.items() if value is _UNWRITABLE}:
            frame.info.pop(key, None)
    if fmt == "HEIF":  # libheif writes an item of a four-byte type only, and raises on another
        for frame in frames:
            if "metadata" in frame.info:
                frame.info["metadata"] = [item for item in frame.info["metadata"]
                                          if len(str(item.get("type", "")).encode()) == HEIF_ITEM_TYPE_BYTES]
    if fmt == "TIFF":
        # Each later page has its own metadata and compression: the writer would give it the first
        # page's (and a bilevel page's CCITT does not fit a greyscale one).
        for frame, page in zip(frames[1:], pages[1:], strict=True):
            frame.encoderinfo = {**_NO_PAGE_METADATA, **page}
    after_pixels = params.pop(PNG_TEXT_AFTER_PIXELS, b"")
    frames[0].save(out, fmt, **params)
    if after_pixels:  # before the IEND chunk that ends what the writer wrote
        out.seek(-len(PNG_END), io.SEEK_END)
        out.write(after_pixels + PNG_END)
    if fmt == "BMP" and frames[0].mode == "RGBA":
        return _bmp_with_alpha_mask(out.getvalue())
    return tiff.with_page_numbers(out.getvalue(), page_numbers)


# BITMAPV4HEADER's fields after the 40 bytes of the plain header: the colour masks (red, green,
# blue, alpha) of BI_BITFIELDS, the colour space (sRGB), and its unused endpoints and gammas.
BMP_INFO_HEADER, BMP_V4_HEADER, BMP_BITFIELDS = 40, 108, 3
BMP_V4_FIELDS = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + bytes(48)


def _bmp_with_alpha_mask(data: bytes) -> bytes:
    """Pillow's 32-bit BMP of an RGBA picture with the header that says its fourth byte is alpha.
    Pillow writes the alpha bytes under a plain header (BI_RGB), which readers, Pillow's own
    included, read as RGB: a V4 header with BI_BITFIELDS and an alpha mask keeps the alpha."""
    size, bits, compression = (struct.unpack_from("<I", data, 14)[0], struct.unpack_from("<H", data, 28)[0],
                               struct.unpack_from("<I", data, 30)[0])
    if size != BMP_INFO_HEADER or bits != 32 or compression != 0:
        return data
    grown = BMP_V4_HEADER - BMP_INFO_HEADER
    file_size, reserved, pixels_at = struct.unpack_from("<IIi", data, 2)
    return (b"BM" + struct.pack("<IIi", file_size + grown, reserved, pixels_at + grown)
            + struct.pack("<I", BMP_V4_HEADER) + data[18:30] + struct.pack("<I", BMP_BITFIELDS) + data[34:54]
            + BMP_V4_FIELDS + data[54:])


def _page_number(page: dict) -> tuple[int, int] | None:
    """The PageNumber a TIFF page is written with, for tiff.with_page_numbers: its source's."""
    value = page.get("tiff_tags", {}).get(tiff.PAGE_NUMBER)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and 0 <= v <= 0xFFFF for v in value):
        return value
    return None


def _jpeg_params(im, data) -> dict:
    # Re-use the source's quantization tables and chroma subsampling: a fixed quality
    # would either lose detail or inflate the file.
    with _pillow_reading(im):
        params = {"subsampling": JpegImagePlugin.get_sampling(im)}
    if getattr(im, "quantization", None):
        params["qtables"] = im.quantization
    if im.info.get("progressive"):
        params["progressive"] = True
    return params


def _png_params(im, data) -> dict:
    sixteen_bits = data[24:25] == b"\x10"
    before_pixels, after_pixels = _png_chunks_kept(data, sixteen_bits)
    params = {"pnginfo": before_pixels, PNG_TEXT_AFTER_PIXELS: after_pixels}
    if "transparency" in im.info:
        key = im.info["transparency"]
        if sixteen_bits and isinstance(key, tuple):  # a 16-bit colour key, for 8-bit colours
            key = tuple(value >> 8 for value in key)
        params["transparency"] = key
    return params


def _png_chunks_kept(data: bytes, sixteen_bits: bool) -> tuple[PngImagePlugin.PngInfo, bytes]:
    """The source's colour space and text chunks before its pixels, for the writer (which writes
    them when given, but its reader keeps only their values); and its text chunks after them, as
    bytes to follow the written pixels (the writer puts text before them). Each as it is, but the
    XMP without its orientation, which the flip applies; not the EXIF that ImageMagick keeps in a
    text chunk (the EXIF is written back on its own); significant bits for 16 would be over 8."""
    before_pixels, after_pixels = PngImagePlugin.PngInfo(), []
    for kind, start, length, after in _png_chunks(data):
        if kind == b"sBIT" and sixteen_bits or kind not in (PNG_TEXT_CHUNKS if after else PNG_KEPT_CHUNKS):
            continue
        body = data[start : start + length]
        keyword = body.split(b"\0", 1)[0]
        if keyword in PNG_EXIF_KEYWORDS:
            continue
        if kind == b"iTXt" and keyword == PNG_XMP_KEYWORD:
            if body[len(keyword) + 1 : len(keyword) + 2] != b"\0":  # compressed (or damaged): no edit in place
                continue
            body = jpeg_lossless.xmp_without_orientation(body)
        if after:
            after_pixels.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        else:
            before_pixels.add(kind, body)
    return before_pixels, b"".join(after_pixels)


def _png_chunk_counts(data: bytes) -> tuple[int, int]:
    """How many chunks the PNG has before its pixels, and in all; counting stops once either
    passes its bound (PNG_MOST_CHUNKS, PNG_MOST_ALL_CHUNKS)."""
    before_pixels = in_all = 0
    for _, _, _, after_pixels in _png_chunks(data):
        in_all += 1
        before_pixels += not after_pixels
        if before_pixels > PNG_MOST_CHUNKS or in_all > PNG_MOST_ALL_CHUNKS:
            break
    return before_pixels, in_all


def _png_chunks(data: bytes):
    """(type, where its data starts, its length, whether it follows the first IDAT) of each chunk
    of the PNG, up to its IEND or the end of what was sent."""
    at, after_pixels = len(PNG_SIGNATURE), False
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        after_pixels = after_pixels or kind == b"IDAT"
        yield kind, at + 8, length, after_pixels
        if kind == b"IEND":
            return
        at += 12 + length


def _webp_params(im, data) -> dict:
    if _webp_is_lossless(data):
        return {"lossless": True, "quality": WEBP_LOSSLESS_EFFORT, "exact": True}
    return {"quality": LOSSY_WEBP_QUALITY}


def _tiff_params(im, data) -> dict:
    compression = im.info.get("compression")
    return {"compression": compression} if compression and compression != "raw" else {}


def _heif_params(im, data) -> dict:
    # pillow-heif takes the XMP (its orientation already removed on reading), the NCLX colour
    # description and the grid's tile size from each frame's own info; thumbnails are made anew
    # from the flipped pixels, at the sizes the source's had.
    params = {"quality": LOSSY_HEIF_QUALITY, "enc_params": {"preset": HEIF_PRESET}, "tile_size": HEIF_TILE}
    if im.info.get("chroma"):
        params["chroma"] = im.info["chroma"]
    return params


def _avif_params(im, data) -> dict:
    params = {"quality": LOSSY_AVIF_QUALITY, "speed": AVIF_SPEED}
    subsampling = _av1_subsampling(data)
    if subsampling:
        params["subsampling"] = subsampling
    if im.info.get("xmp"):
        # Pillow writes only the XMP it is given; taken out, its orientation is not applied twice.
        params["xmp"] = jpeg_lossless.xmp_without_orientation(im.info["xmp"])
    return params


_FORMAT_PARAMS = {
    "JPEG": _jpeg_params,
    "PNG": _png_params,
    "WEBP": _webp_params,
    "TIFF": _tiff_params,
    "BMP": lambda im, data: {},
    "HEIF": _heif_params,
    "AVIF": _avif_params,
}
# A picture has an AV1 configuration box an image (colour, alpha, a grid's tiles); 24 MB of
# them took 2 s to look through, 1,000 take microseconds.
AV1C_MOST = 1_000
# The AV1 configuration box: its third byte holds monochrome, then the horizontal and vertical
# chroma subsampling bits.
_AV1C = b"av1C"
_AV1_SUBSAMPLING = {(0, 0): "4:4:4", (1, 0): "4:2:2", (1, 1): "4:2:0"}


def _av1_subsampling(data: bytes) -> str | None:
    """The chroma subsampling of the AVIF's colour image (Pillow does not tell it), to write it
    back the same: the least subsampled of its configuration boxes that are not monochrome (an
    alpha image's is), of the first AV1C_MOST found; None when none is found."""
    found, at = [], data.find(_AV1C)
    for _ in range(AV1C_MOST):
        if at == -1 or at + 7 > len(data):
            break
        flags = data[at + 6]
        if not flags & 0x10:  # monochrome
            found.append(_AV1_SUBSAMPLING.get(((flags >> 3) & 1, (flags >> 2) & 1)))
        at = data.find(_AV1C, at + 4)
    found = [value for value in found if value]
    return min(found, key=list(_AV1_SUBSAMPLING.values()).index) if found else None


def _webp_is_lossless(data: bytes) -> bool:
    """True when every bitstream in the RIFF container is VP8L (lossless), none VP8. Walking
    more than WEBP_MOST_CHUNKS chunks is refused: empty ones cost 8 bytes and a loop turn each."""
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
        if walked > WEBP_MOST_CHUNKS:
            raise TooCostly(f"the WebP has more than {WEBP_MOST_CHUNKS:,} chunks, the most a picture may have "
                            "(an animation has about 3 a frame): each costs time before any pixel")
    return kinds == {b"VP8L"}
