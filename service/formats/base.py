"""What every format module shares: the errors a client is shown, the limits a picture is held
to, the clock a flip runs against, and Format, the hooks through which service.imaging reaches a
format's own knowledge. Nothing here knows any one format."""

from __future__ import annotations

import contextlib
import io
import struct
import time
from dataclasses import dataclass

from PIL import Image, ImageMode

# Flipped.path: the JPEG's DCT coefficients moved (nothing decoded), or the pixels decoded and
# written again.
LOSSLESS, RE_ENCODED = "lossless", "re-encoded"
# The pixel limits are set for a flip holding two copies of a picture at 4 bytes a pixel, the
# decoded one and the flipped one (service/memory.py works out a replica's memory from them).
# A format whose encoder holds more at its peak (Format.peak_bytes_per_pixel, measured by the
# tests of its module) has its pixels count that many times 1/8 each against FLIP_MAX_PIXELS and
# FLIP_MAX_TOTAL_PIXELS, so that the memory worked out holds.
LIMITS_BYTES_PER_PIXEL = 8
# Pillow keeps an 8-byte pointer a row in each of the two copies (a quarter turn's has a row a
# column): a flip of a picture of one column and 10 million rows held 172 MiB at its peak, 18
# bytes a row. Each row counts for this much too.
ROW_BYTES = 16
ALPHA_MODES = frozenset({"RGBA", "LA", "RGBa", "La", "PA"})
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


class ImageError(Exception):
    """A picture this service refuses; the message is safe to show to a client."""


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
class Written:
    """A picture a format flipped its own way (Format.own_flip), not through Pillow's writer."""

    data: bytes
    width: int
    height: int
    frames: int
    path: str = RE_ENCODED


class Deadline:
    """The moment a flip gives up: checked wherever the picture's bytes are read or written."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise TooCostly(f"the picture took longer than {self.seconds:g} s to flip, the most a flip may "
                            "take: it was given up, and would take as long again")


class TimedReader(io.BytesIO):
    """The picture's bytes, for Pillow's decoders, which read them a block at a time."""

    def __init__(self, data: bytes, deadline: Deadline):
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return super().read(size)


class TimedWriter(io.BytesIO):
    """Where the encoders write, a block at a time: no later than the deadline, no more than the
    answer limit."""

    def __init__(self, deadline: Deadline, max_bytes: int):
        super().__init__()
        self.deadline = deadline
        self.max_bytes = max_bytes

    def write(self, data) -> int:
        self.deadline.check()
        if self.tell() + len(data) > self.max_bytes:
            raise TooCostly(answer_too_large(self.max_bytes))
        return super().write(data)


def answer_too_large(max_bytes: int) -> str:
    return (f"the flipped picture would be over {max_bytes:,} bytes, the largest answer; "
            "send it in a format that compresses it")


@contextlib.contextmanager
def pillow_writing(im: Image.Image):
    """Around the encoder: only an encoder's own failure (OSError) is the picture's doing (what
    it carries into the file: a profile, a palette). A ValueError or TypeError here comes from
    the parameters we chose, a bug, and goes on to the 500 handler."""
    try:
        yield
    except OSError as exc:
        raise NotAnImage(f"the {im.format} picture cannot be written back: {exc}") from exc


@contextlib.contextmanager
def pillow_reading(im: Image.Image):
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


def check_pixels(size: tuple[int, int], mode: str, limits: Limits, memory_format: str, weight: float,
                 slow: bool = False, turned: bool = False) -> float:
    """Refuse from the header alone, before anything is decoded; else the pixels a picture of
    `size` and `mode` counts for against the limits (`weight` each, Format.pixel_weight, and its
    rows: a quarter turn's copy has a row a column). `slow`: the weight is for time, not memory."""
    width, height = size
    rows = (height + (width if turned else height)) / 2
    counted = width * height * weight + rows * ROW_BYTES / LIMITS_BYTES_PER_PIXEL
    if width * height * weight > limits.max_pixels:
        alpha = " with alpha" if mode in ALPHA_MODES else ""
        cost = "time" if slow else "memory"
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


def eight_bit_mode(mode: str) -> bool:
    """Whether Pillow's `mode` holds 8 bits a sample (not I;16, I or F): where Pillow decodes
    deeper samples to 8 bits."""
    return ImageMode.getmode(mode).typestr[-1] == "1"


class Format:
    """One picture format as service.imaging flips it: Pillow decodes it, transposes it and
    writes it back, and the format says where it differs. Each module of service/formats
    defines its own (a subclass overriding what its format does otherwise) and
    service/formats/__init__.py lists it."""

    name = ""  # Pillow's name for it
    media_type = ""
    media_type_aliases: tuple[str, ...] = ()  # what clients also send for it, accepted as its media type
    also_named: tuple[str, ...] = ()  # Pillow's names of pictures written back as this format
    signatures: tuple[bytes, ...] = ()  # how its data starts: walk() reads it before Pillow does
    # (memory format, with alpha) -> bytes a pixel a flip held at its peak, where it is over
    # LIMITS_BYTES_PER_PIXEL (measured by the tests of the format's module).
    peak_bytes_per_pixel: dict[tuple[str, bool], int] = {}
    # Memory format -> how many pixels each of its pixels counts for, for time, not memory.
    slow_pixel_weights: dict[str, int] = {}
    only_first_frame = False  # what follows the first frame is not written back
    own_pages = False  # each frame is a page with its own orientation, metadata and compression

    def recognises(self, data: bytes) -> bool:
        return data.startswith(self.signatures) if self.signatures else False

    def walk(self, data: bytes, limits: Limits):
        """The one walk of the picture's structure before Pillow reads it: refuses what would cost
        more than the limits allow, and keeps what the flip needs later (None: nothing)."""
        return None

    def why_unread(self, data: bytes) -> str | None:
        """Why Pillow reads none of `data` that looks like this format, for a 415; None: not known."""
        return None

    def opened(self, im: Image.Image, walk) -> None:
        """Settings on the opened picture before it is decoded."""

    def exifs(self, im: Image.Image, data: bytes, walk) -> list[bytes]:
        """Every EXIF Pillow's getexif() may read from the picture (checked before it is read)."""
        return [im.info["exif"]] if im.info.get("exif") else []

    def memory_format(self, frame: Image.Image, data: bytes, walk) -> str:
        """The name its pixel weights are given under (peak_bytes_per_pixel, slow_pixel_weights)."""
        return frame.format

    def least_bytes(self, data: bytes, walk) -> int:
        """The fewest bytes a file of its header's pixels can be, for the formats whose decoders would
        otherwise make up the pixels the data lacks (grey or black) without a word; else 0."""
        return 0

    def pixel_weight(self, memory_format: str, mode: str) -> float:
        """How many pixels each of a picture's counts for against the pixel limits."""
        peak = self.peak_bytes_per_pixel.get((memory_format, mode in ALPHA_MODES), LIMITS_BYTES_PER_PIXEL)
        return max(1.0, peak / LIMITS_BYTES_PER_PIXEL, self.slow_pixel_weights.get(memory_format, 1))

    def count_pixels(self, size: tuple[int, int], mode: str, limits: Limits, memory_format: str,
                     turned: bool = False) -> float:
        """The pixels a picture counts for against the limits (check_pixels), refused if over them."""
        return check_pixels(size, mode, limits, memory_format, self.pixel_weight(memory_format, mode),
                            slow=memory_format in self.slow_pixel_weights, turned=turned)

    def narrowed_to_8_bits(self, frame: Image.Image) -> bool:
        """Whether the frame has more than 8 bits a sample that Pillow decodes to 8."""
        return False

    def own_flip(self, im, data, walk, operation, flip, limits, spans, deadline, lossless) -> Written | str:
        """The picture flipped this format's own way, or why not (Flipped.reason; "": no own way).
        `operation` applies the orientation and flips; `flip` only flips."""
        return ""

    def check_frame(self, frame: Image.Image) -> None:
        """Refuse a frame (or page) that costs more to decode than its pixels count for."""

    def save_params(self, im: Image.Image, data: bytes, params: dict, walk, turned: bool, later_page: bool) -> dict:
        """The writer's parameters: `params` (what Pillow's info holds for every format) and the
        format's own, from the source (im, walk); `turned` a quarter by the flip."""
        return params

    def prepare_write(self, frames: list, pages: list[dict]):
        """Before each try at writing: `pages` are each frame's parameters, changed in place."""
        return None

    def save(self, frame: Image.Image, out, params: dict) -> None:
        frame.save(out, self.name, **params)

    def finish_write(self, data: bytes, frames: list, prepared) -> bytes:
        """What the writer wrote, with what it cannot write put in (`prepared`: prepare_write's)."""
        return data
