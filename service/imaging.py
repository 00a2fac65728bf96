"""Flip pictures: bytes in, bytes out. No web framework here, so it can be tested and
benchmarked on its own."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field

from PIL import ExifTags, Image, ImageSequence, JpegImagePlugin, UnidentifiedImageError

# Pillow format name -> media type; the only formats read and written.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
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
LOSSY_WEBP_QUALITY = 90
# Pillow reports damaged data through any of these, depending on the plugin.
PILLOW_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


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


@dataclass(frozen=True)
class Limits:
    """What one picture may hold; the service builds them from its settings (service.config)."""

    max_pixels: int
    max_frames: int
    # All frames of an animation together, kept flipped until they are written (~4 bytes a
    # pixel): bounds the memory one request can take.
    max_total_pixels: int


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

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def flip(data: bytes, direction: str = "vertical", limits: Limits = NO_LIMITS) -> Flipped:
    """Flip the picture in `data` and encode it again in its own format.

    The EXIF orientation is applied first, so the result is the flip of what a viewer shows,
    and no orientation tag is written back.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, not {direction!r}")
    if not data:
        raise NotAnImage("the body is empty: send a picture")
    spans = Spans()
    with spans.timing("decode"):
        im = _open(data, limits)
    # MPO (a phone's JPEG with a preview frame appended) is written back as its main JPEG.
    fmt = "JPEG" if im.format == "MPO" else im.format
    try:
        with _pillow_reading(im), spans.timing("decode"):
            orientation = im.getexif().get(ORIENTATION, 1)
        upright = ORIENTATION_TRANSPOSE.get(orientation)
        # The first frame's info holds the file-wide settings; seeking replaces it.
        params = _save_params(im, fmt, data)
        frames, durations = _flip_frames(im, upright, DIRECTIONS[direction], limits, fmt, spans)
        out = io.BytesIO()
        with _pillow_writing(im), spans.timing("encode"):
            _save(frames, durations, params, fmt, out)
    finally:
        im.close()
    first = frames[0]
    return Flipped(out.getvalue(), fmt, first.width, first.height, len(frames), spans)


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
    """Around Pillow's own calls only: their errors mean damaged data, not a bug of ours."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise TooLarge(str(exc)) from exc
    except PILLOW_DATA_ERRORS as exc:
        raise NotAnImage(f"the {im.format} data is damaged or truncated: {exc}") from exc


def identify(data: bytes) -> str | None:
    """The Pillow format name of `data`, or None when no plugin recognises it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Exception:  # any plugin may fail in its own way on foreign data
        return None


def _open(data: bytes, limits: Limits) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data), formats=list(MEDIA_TYPES))
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"the picture has too many pixels: {exc}") from exc
    except UnidentifiedImageError:
        other = identify(data)
        if other is not None:
            raise UnsupportedFormat(
                f"{other} pictures are not supported; send one of {', '.join(MEDIA_TYPES)}"
            ) from None
        raise NotAnImage("the body is not a picture this service can read") from None
    except PILLOW_DATA_ERRORS as exc:
        raise NotAnImage(f"the picture's header is damaged: {exc}") from exc
    _check_pixels(im, limits)
    return im


def _check_pixels(im: Image.Image, limits: Limits) -> None:
    """Refuse from the header alone, before anything is decoded."""
    width, height = im.size
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"the picture is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,}"
        )


def _flip_frames(im, upright, flip_method, limits, fmt, spans):
    """Every frame as a viewer sees it (`upright` applied), flipped."""
    frames, durations = [], []
    total_pixels = 0
    for index, frame in enumerate(_pillow_frames(im, spans)):
        if fmt == "JPEG" and index:
            break
        if index >= limits.max_frames:
            raise TooLarge(f"the animation has more than {limits.max_frames} frames")
        _check_pixels(frame, limits)
        total_pixels += frame.width * frame.height
        if total_pixels > limits.max_total_pixels:
            raise TooLarge(
                f"the animation's frames add up to more than {limits.max_total_pixels:,} pixels"
            )
        with _pillow_reading(im):
            with spans.timing("decode"):
                frame.load()
            with spans.timing("flip"):
                shown = frame if upright is None else frame.transpose(upright)
                flipped = shown.transpose(flip_method)
        durations.append(frame.info.get("duration"))  # WebP sets it only once loaded
        frames.append(flipped)
    return frames, durations


def _pillow_frames(im: Image.Image, spans: Spans):
    """The frames of `im`; seeking to the next one decodes data, so its errors are Pillow's."""
    frames = iter(ImageSequence.Iterator(im))
    while True:
        with _pillow_reading(im), spans.timing("decode"):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _exif_without_orientation(im: Image.Image) -> bytes | None:
    with _pillow_reading(im):
        exif = im.getexif()
        if not exif:
            return None
        if ORIENTATION in exif:
            del exif[ORIENTATION]
        return exif.tobytes()


def _save_params(im, fmt, data) -> dict:
    params = {}
    for key in ("icc_profile", "dpi", "loop"):
        if im.info.get(key) is not None:
            params[key] = im.info[key]
    exif = _exif_without_orientation(im)
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["exif"] = exif
    params.update(_FORMAT_PARAMS[fmt](im, data))
    return params


def _save(frames, durations, params, fmt, out) -> None:
    if len(frames) > 1:
        params = dict(params, save_all=True, append_images=frames[1:])
        if all(d is not None for d in durations):
            params["duration"] = durations
    frames[0].save(out, fmt, **params)


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
    params = {}
    if "transparency" in im.info:
        params["transparency"] = im.info["transparency"]
    return params


def _gif_params(im, data) -> dict:
    # Frames arrive composited and carry their own palette and transparency; a file-wide
    # transparency index passed here would be wrong for every frame but the first.
    return {}


def _webp_params(im, data) -> dict:
    if _webp_is_lossless(data):
        return {"lossless": True, "quality": 100, "exact": True}
    return {"quality": LOSSY_WEBP_QUALITY}


def _tiff_params(im, data) -> dict:
    compression = im.info.get("compression")
    return {"compression": compression} if compression and compression != "raw" else {}


_FORMAT_PARAMS = {
    "JPEG": _jpeg_params,
    "PNG": _png_params,
    "GIF": _gif_params,
    "WEBP": _webp_params,
    "TIFF": _tiff_params,
    "BMP": lambda im, data: {},
}


def _webp_is_lossless(data: bytes) -> bool:
    """True when every bitstream in the RIFF container is VP8L (lossless), none VP8."""
    kinds = set()
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
        elif tag in (b"VP8 ", b"VP8L"):
            kinds.add(tag)
        offset += 8 + size + (size & 1)
    return kinds == {b"VP8L"}
