"""Lossless JPEG flips and rotations in the DCT domain (jpegtran -perfect), through TurboJPEG.

Bytes in, bytes out: the quantised DCT coefficients are moved, never decoded and encoded again,
so nothing is lost (a decoder's rounding may still differ by a level or few, see the tests).
Only pictures whose size allows a perfect transform are done; the caller re-encodes the others
(NotPerfect).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from PIL import ExifTags, Image

from service.formats import jpeg_markers as markers
from service.formats import metadata
from service.formats.metadata import EXIF_HEADER

SONAME = "libturbojpeg.so.0"

# turbojpeg.h (libjpeg-turbo 2.1): transform operations, options and flags.
TJXOP_NONE = 0
TJXOP_HFLIP, TJXOP_VFLIP, TJXOP_TRANSPOSE, TJXOP_TRANSVERSE = 1, 2, 3, 4
TJXOP_ROT90, TJXOP_ROT180, TJXOP_ROT270 = 5, 6, 7
# The operations that turn a picture a quarter: its width and height change places.
TJXOP_QUARTER_TURNS = frozenset({TJXOP_TRANSPOSE, TJXOP_TRANSVERSE, TJXOP_ROT90, TJXOP_ROT270})
TJXOPT_PERFECT = 1
TJXOPT_PROGRESSIVE = 32
TJFLAG_STOPONWARNING = 8192
TJFLAG_LIMITSCANS = 32768
TJERR_WARNING = 0
# MCU size in pixels by TJSAMP value: 4:4:4, 4:2:2, 4:2:0, grey, 4:4:0, 4:1:1.
MCU_SIZES = ((8, 8), (16, 8), (16, 16), (8, 8), (8, 16), (32, 8))

# Pillow's ROTATE_90 and ROTATE_270 turn counter-clockwise, TurboJPEG's clockwise.
OPERATIONS = {
    None: TJXOP_NONE,  # the coefficients as they are: only the markers change
    Image.Transpose.FLIP_LEFT_RIGHT: TJXOP_HFLIP,
    Image.Transpose.FLIP_TOP_BOTTOM: TJXOP_VFLIP,
    Image.Transpose.TRANSPOSE: TJXOP_TRANSPOSE,
    Image.Transpose.TRANSVERSE: TJXOP_TRANSVERSE,
    Image.Transpose.ROTATE_90: TJXOP_ROT270,
    Image.Transpose.ROTATE_180: TJXOP_ROT180,
    Image.Transpose.ROTATE_270: TJXOP_ROT90,
}
APP1, APP2 = 0xE1, 0xE2
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
MPF_HEADER = b"MPF\x00"
# TurboJPEG's error message -> NotPerfect.reason.
NOT_PERFECT_MESSAGES = {"Transform is not perfect": "not aligned",
                        "Could not determine subsampling type": "unusual subsampling"}


class LosslessError(Exception):
    """A JPEG this module does not transform; the message says why."""


class Unavailable(LosslessError):
    """libturbojpeg could not be loaded."""


class NotPerfect(LosslessError):
    """No lossless transform for this JPEG (size, coding or EXIF): re-encode it instead.
    `reason` says why in a few words: "not aligned", "arithmetic coding"..."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class DamagedJpeg(LosslessError):
    """TurboJPEG found the data corrupt or truncated (a libjpeg warning counts, see transform)."""


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Transform(ctypes.Structure):
    _fields_ = [
        ("r", _Region),
        ("op", ctypes.c_int),
        ("options", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("customFilter", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_loaded: list = []  # holds the CDLL, or None, once loading was tried


def _load() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("turbojpeg"), SONAME):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            _declare(lib)
        except (OSError, AttributeError):  # missing file, or a library without the 2.0 API
            continue
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    handle, buffer = ctypes.c_void_p, ctypes.c_void_p
    lib.tjInitTransform.restype = handle
    lib.tjInitTransform.argtypes = []
    lib.tjDestroy.argtypes = [handle]
    lib.tjFree.argtypes = [buffer]
    lib.tjFree.restype = None
    lib.tjGetErrorStr2.argtypes = [handle]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorCode.argtypes = [handle]
    lib.tjTransform.argtypes = [
        handle, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int,
        ctypes.POINTER(buffer), ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(_Transform), ctypes.c_int,
    ]
    pint = ctypes.POINTER(ctypes.c_int)
    lib.tjDecompressHeader3.argtypes = [handle, ctypes.c_char_p, ctypes.c_ulong, pint, pint, pint, pint]


def _library() -> ctypes.CDLL | None:
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def available() -> bool:
    """Whether libturbojpeg could be loaded."""
    return _library() is not None


def _call(fn):
    """Run fn(lib, handle) with a handle of its own (TurboJPEG handles are not thread-safe)."""
    lib = _library()
    if lib is None:
        raise Unavailable(f"libturbojpeg is not installed ({SONAME} not found)")
    handle = lib.tjInitTransform()
    if not handle:
        raise MemoryError("tjInitTransform failed")
    try:
        return fn(lib, handle)
    finally:
        lib.tjDestroy(handle)


def _raise_error(lib, handle) -> None:
    message = lib.tjGetErrorStr2(handle).decode(errors="replace")
    for text, reason in NOT_PERFECT_MESSAGES.items():
        if text in message:
            raise NotPerfect(message, reason)
    kind = "warning" if lib.tjGetErrorCode(handle) == TJERR_WARNING else "error"
    raise DamagedJpeg(f"the JPEG data is damaged or truncated (libjpeg {kind}: {message})")


def mcu_size(data: bytes) -> tuple[int, int]:
    """Width and height in pixels of the JPEG's MCU: a perfect transform needs multiples of it."""

    def header(lib, handle):
        width, height, subsampling, colorspace = (ctypes.c_int() for _ in range(4))
        if lib.tjDecompressHeader3(handle, data, len(data), ctypes.byref(width), ctypes.byref(height),
                                   ctypes.byref(subsampling), ctypes.byref(colorspace)):
            _raise_error(lib, handle)
        return MCU_SIZES[subsampling.value]

    return _call(header)


def transform(data: bytes, operation: Image.Transpose | None) -> bytes:
    """The JPEG in `data` transformed by `operation` (None: left as it is) without loss, as a
    plain JPEG.

    Raises NotPerfect when the size is not a multiple of the MCU along the edges the operation
    moves, or for codings TurboJPEG would change (arithmetic, lossless); DamagedJpeg for corrupt
    or truncated data; Unavailable without libturbojpeg. Every APPn and COM marker is kept, less
    the orientation (EXIF's tag, XMP's tiff:Orientation) and an MPO's MPF index; what follows
    the first EOI is dropped. The orientation is removed, not applied: to turn what a viewer
    shows, compose it into `operation`. Turned a quarter, the EXIF's PixelXDimension and
    PixelYDimension change places too.
    """
    data = bytes(data)
    op = OPERATIONS[None if operation is None else Image.Transpose(operation)]
    options = TJXOPT_PERFECT
    sof = _start_of_frame(data)
    if sof is not None and sof not in markers.SOF_HUFFMAN:
        # TurboJPEG 2.1 writes Huffman-coded baseline/progressive only: not lossless for these.
        raise NotPerfect(f"JPEG coding SOF{sof - 0xC0} is not transformed losslessly", _coding(sof))
    if sof == 0xC2:
        options |= TJXOPT_PROGRESSIVE  # else TurboJPEG writes a progressive source as baseline

    def run(lib, handle):
        spec = _Transform(op=op, options=options)
        out, size = ctypes.c_void_p(), ctypes.c_ulong()
        try:
            # STOPONWARNING: give up at libjpeg's first warning (truncated or corrupt data) rather
            # than finish a picture padded with grey; LIMITSCANS: refuse over 500 progressive scans.
            failed = lib.tjTransform(handle, data, len(data), 1, ctypes.byref(out), ctypes.byref(size),
                                     ctypes.byref(spec), TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS)
            if failed:
                _raise_error(lib, handle)
            return ctypes.string_at(out, size.value)
        finally:
            if out:
                lib.tjFree(out)

    return _edit_header(_call(run), transformed=True, turned=op in TJXOP_QUARTER_TURNS)


def without_orientation(data: bytes) -> bytes:
    """The JPEG in `data` with the orientation taken out of its EXIF and XMP; the rest unchanged.
    NotPerfect when the EXIF cannot be rewritten."""
    return _edit_header(bytes(data), transformed=False, turned=False)


def _start_of_frame(data: bytes) -> int | None:
    return next((marker for marker, _, _ in markers.segments(data) if marker in markers.START_OF_FRAME), None)


def _coding(sof: int) -> str:
    """NotPerfect.reason for a start of frame TurboJPEG does not write."""
    if sof >= 0xC8:
        return "arithmetic coding"
    return "lossless coding" if sof == 0xC3 else "hierarchical coding"


def _edit_header(data: bytes, transformed: bool, turned: bool) -> bytes:
    """`data` with the EXIF and XMP orientation removed and, if the picture was `transformed`, what
    no longer matches it dropped: the MPF segment and the EXIF thumbnail; if it was `turned` a
    quarter, the EXIF's width and height swapped."""
    parts, kept_from = [], 0
    for marker, start, end in markers.segments(data):
        body = data[start + 4 : end]
        if marker == APP2 and transformed and body.startswith(MPF_HEADER):
            replacement = b""  # its offsets point at pictures that are not in the output
        elif marker == APP1 and body.startswith(EXIF_HEADER):
            edited = metadata.with_dimensions_swapped(body) if turned else body
            edited = metadata.without_orientation(edited)
            if transformed:
                edited = metadata.without_thumbnail(edited)
            # An orientation the in-place edits could not reach: Pillow rewrites the EXIF without
            # it (and without the thumbnail, as Pillow writes none).
            replacement = _exif_segment_without_orientation(edited)
            if replacement is None and edited != body:
                replacement = _app1_segment(edited)
        elif marker == APP1 and body.startswith(XMP_HEADER):
            replacement = _xmp_segment_without_orientation(body)
        else:
            continue
        if replacement is not None:
            parts += [data[kept_from:start], replacement]
            kept_from = end
    if not parts:
        return data
    parts.append(data[kept_from:])
    return b"".join(parts)


def _exif_segment_without_orientation(body: bytes) -> bytes | None:
    """The APP1 segment for `body` without the orientation tag; None when it has none."""
    exif = Image.Exif()
    try:
        exif.load(body)
        if ExifTags.Base.Orientation not in exif:
            return None
        del exif[ExifTags.Base.Orientation]
        payload = exif.tobytes()
    except Exception as exc:  # Pillow's TIFF reader fails in many ways on damaged EXIF
        raise NotPerfect(f"the EXIF data cannot be rewritten: {exc}", "EXIF not rewritable") from exc
    if len(payload) + 2 > 0xFFFF:
        raise NotPerfect("the EXIF data without its orientation does not fit in one segment", "EXIF not rewritable")
    return _app1_segment(payload)


def _app1_segment(body: bytes) -> bytes:
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def _xmp_segment_without_orientation(body: bytes) -> bytes | None:
    """The APP1 segment for `body` without tiff:Orientation; None when it has none (shorter, so
    it still fits)."""
    payload = metadata.xmp_without_orientation(body)
    if payload == body:
        return None
    return _app1_segment(payload)
