"""Flip pictures: bytes in, bytes out. No web framework here, so it can be tested and
benchmarked on its own.

This is the flow every format shares: check the picture's structure (its format's walk), open
it, check its pixels against the limits, transpose each frame with its orientation, and write it
back, all against the deadline, timing each part. What a format does its own way lives in its
module of service/formats, reached through formats.FORMATS."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, ImageSequence, UnidentifiedImageError

from service.formats import BY_PILLOW_NAME, FORMATS, MEDIA_TYPES, metadata, recognised
from service.formats.base import (  # noqa: F401 - the errors and limits are this module's interface too
    LIMITS_BYTES_PER_PIXEL,
    LOSSLESS,
    NO_LIMITS,
    PILLOW_DATA_ERRORS,
    PILLOW_WRITE_ERRORS,
    RE_ENCODED,
    ROW_BYTES,
    Deadline,
    ImageError,
    Limits,
    NotAnImage,
    Spans,
    TimedReader,
    TimedWriter,
    TooCostly,
    TooLarge,
    UnsupportedFormat,
    Written,
    pillow_reading,
    pillow_writing,
)

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
ORIENTATION = metadata.ORIENTATION
# The transposes that turn a picture a quarter: width and height change places.
QUARTER_TURNS = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                           Image.Transpose.ROTATE_270})
# Every format's peak bytes a pixel ((memory format, with alpha) -> bytes; Format.peak_bytes_per_pixel).
PEAK_BYTES_PER_PIXEL = {key: peak for f in FORMATS.values() for key, peak in f.peak_bytes_per_pixel.items()}
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
# Enough of a file for Pillow's plugins to recognise its header. Given more, some read on: EPS's
# scans a whole body line by line (25 MB: about 20 s) only to name a format that gets a 415.
IDENTIFY_BYTES = 64 * 1024


def keep_image_memory(blocks: int) -> None:
    """Let Pillow reuse up to `blocks` freed 16 MiB image blocks instead of returning them at
    once (16 hold a 24 MP photo and its flip).

    By default every picture maps and faults in its ~200 MB afresh, and the heap creeps under
    steady load; keeping the blocks held a replica's memory flat over minutes and flipped a few
    per cent faster (see the README's Reliability section). Costs `blocks` x 16 MiB when idle.
    """
    Image.core.set_blocks_max(blocks)


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

    A JPEG is transposed in the DCT domain (service.formats.jpeg_lossless, nothing decoded,
    nothing lost) unless `lossless` is False or that cannot be done; Flipped.path and
    Flipped.reason say which. Either way the pixel and scan limits are checked from the header
    first. A GIF is flipped image by image, each with its own palette and disposal.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, not {direction!r}")
    if not data:
        raise NotAnImage("the body is empty: send a picture")
    deadline = Deadline(limits.max_seconds)
    spans = Spans()
    with spans.timing("decode"):
        im, fmt, walk, memory_format = _open(data, limits, deadline)
    # Before getexif(), which decodes a PNG: decoding empties the tile that tells a PNG's depth.
    narrowed = fmt.narrowed_to_8_bits(im)
    try:
        operation = _operation(im, direction, spans)
        own = fmt.own_flip(im, data, walk, operation, DIRECTIONS[direction], limits, spans, deadline, lossless)
        if isinstance(own, Written):
            return Flipped(own.data, fmt.name, own.width, own.height, own.frames, spans, path=own.path)
        # The first frame's info holds the file-wide settings; seeking replaces it.
        params = _save_params(im, fmt, data, walk, turned=operation in QUARTER_TURNS)
        frames, durations, narrowed_frames, later_pages = _flip_frames(im, fmt, walk, operation, direction, limits,
                                                                       spans, deadline, memory_format, data)
        im.close()  # the decoded pixels: the encoder needs only the flipped ones
        with pillow_writing(im), spans.timing("encode"):
            written, dropped = _save(frames, durations, [params, *later_pages], fmt,
                                     lambda: TimedWriter(deadline, limits.max_answer_bytes))
    finally:
        im.close()
    if narrowed or narrowed_frames:
        dropped = (*dropped, HIGH_BIT_DEPTH)
    first = frames[0]
    return Flipped(written, fmt.name, first.width, first.height, len(frames), spans, dropped, RE_ENCODED, own)


def writer_params(format_name: str, im: Image.Image, data: bytes = b"") -> dict:
    """What the writer of `format_name` is given for `im` (read from `data`, if it was), unturned:
    for measurements that write a picture as the service writes it."""
    fmt = FORMATS[format_name]
    walk = fmt.walk(data, NO_LIMITS) if data and fmt.recognises(data) else None
    return fmt.save_params(im, data, {}, walk, turned=False, later_page=False)


def _operation(im: Image.Image, direction: str, spans: Spans) -> Image.Transpose | None:
    """The one transpose that applies the EXIF orientation of `im`'s current frame, then flips it
    in `direction`. Orientations outside 1-8 are ignored, as viewers ignore them.

    The orientation is taken out of the frame's EXIF, before its pixels are loaded: Pillow turns a
    TIFF page by it as it loads the page, and the transpose would turn it a second time."""
    with pillow_reading(im), spans.timing("decode"):
        orientation = im.getexif().pop(ORIENTATION, 1)
    return compose(ORIENTATION_TRANSPOSE.get(orientation), DIRECTIONS[direction])


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


def identify(data: bytes) -> str | None:
    """The Pillow format name of `data` from its first IDENTIFY_BYTES, or None when no plugin
    recognises it."""
    try:
        with Image.open(io.BytesIO(data[:IDENTIFY_BYTES])) as im:
            return im.format
    except Exception:  # any plugin may fail in its own way on foreign data
        return None


def _open(data: bytes, limits: Limits, deadline: Deadline):
    """The picture opened, its structure and header checked against the limits; its format, what
    the format's walk kept, and its memory format."""
    walked = recognised(data)
    walk = walked.walk(data, limits) if walked else None
    try:
        im = Image.open(TimedReader(data, deadline), formats=list(MEDIA_TYPES))
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"the picture has too many pixels: {exc}") from exc
    except UnidentifiedImageError:
        why = walked.why_unread(data) if walked else None
        if why:
            raise UnsupportedFormat(why) from None
        other = identify(data)
        if other is not None:
            raise UnsupportedFormat(
                f"{other} pictures are not supported; send one of {', '.join(MEDIA_TYPES)}"
            ) from None
        raise NotAnImage("the body is not a picture this service can read") from None
    except PILLOW_DATA_ERRORS as exc:
        raise NotAnImage(f"the picture's header is damaged: {exc}") from exc
    fmt = BY_PILLOW_NAME[im.format]
    if fmt is not walked:
        walk = fmt.walk(data, limits)
    metadata.check_exifs(fmt.exifs(im, data, walk))
    memory_format = fmt.memory_format(im, data, walk)
    fmt.count_pixels(im.size, im.mode, limits, memory_format)
    least = fmt.least_bytes(data, walk)
    if len(data) < least:
        im.close()
        raise NotAnImage(f"the {im.format} header says {im.width}x{im.height} pixels, more than its {len(data):,} "
                         f"bytes can hold (at least {least:,}): the data is truncated or the header damaged")
    fmt.opened(im, walk)
    return im, fmt, walk, memory_format


def _flip_frames(im, fmt, walk, operation, direction, limits, spans, deadline, memory_format, data):
    """Every frame transposed by `operation` (None: copied as it is), but a TIFF's later pages, each
    by its own orientation and the flip in `direction`; whether any of them was decoded from more
    than 8 bits a sample to 8; and a TIFF's later pages' own metadata."""
    frames, durations, later_pages = [], [], []
    total_pixels = 0
    narrowed = False
    for index, frame in enumerate(_pillow_frames(im, spans)):
        if fmt.only_first_frame and index:
            break
        if fmt.own_pages and index:
            operation = _operation(frame, direction, spans)  # each page's directory has its own
        if index >= limits.max_frames:
            raise TooLarge(f"the animation has more than {limits.max_frames} frames")
        if fmt.own_pages and index:
            later_pages.append(_save_params(frame, fmt, data, walk, operation in QUARTER_TURNS, later_page=True))
        page_format = fmt.memory_format(frame, data, walk) if fmt.own_pages else memory_format
        total_pixels += fmt.count_pixels(frame.size, frame.mode, limits, page_format,
                                         turned=operation in QUARTER_TURNS)
        if total_pixels > limits.max_total_pixels:
            raise TooLarge(
                f"the animation's frames add up to more than {limits.max_total_pixels:,} pixels"
            )
        fmt.check_frame(frame)
        deadline.check()
        narrowed = narrowed or fmt.narrowed_to_8_bits(frame)
        with pillow_reading(im):
            with spans.timing("decode"):
                frame.load()
            deadline.check()
            with spans.timing("flip"):
                flipped = frame.copy() if operation is None else frame.transpose(operation)
        durations.append(frame.info.get("duration"))  # WebP sets it only once loaded
        frames.append(flipped)
    return frames, durations, narrowed, later_pages


def _pillow_frames(im: Image.Image, spans: Spans):
    """The frames of `im`; seeking to the next one decodes data, so its errors are Pillow's."""
    frames = iter(ImageSequence.Iterator(im))
    while True:
        with pillow_reading(im), spans.timing("decode"):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame


def _save_params(im, fmt, data, walk, turned, later_page=False) -> dict:
    """What the writer is given for the frame `im` is at: what Pillow's info holds for every format,
    then the format's own (Format.save_params)."""
    params = {key: im.info[key] for key in ("icc_profile", "dpi", "loop") if im.info.get(key) is not None}
    return fmt.save_params(im, data, params, walk, turned, later_page)


def _save(frames, durations, pages, fmt, new_output) -> tuple[bytes, tuple[str, ...]]:
    """The frames written in `fmt`, and the names of the source's metadata (SOURCE_METADATA)
    left out for the writer to accept them, in SOURCE_METADATA's order. `pages` holds the first
    frame's metadata (_save_params), then a TIFF's later pages' own.

    Tries with all of it, then without each single item, then without the first two, three...
    together, from every page; only the last try, with none of it, is let fail: what fails then
    is no fault of the source's metadata. What a page holds UNWRITABLE is left out of it, and named."""
    unwritable = [name for name, key in SOURCE_METADATA.items()
                  if any(page.get(key) is metadata.UNWRITABLE for page in pages)]
    carried = [name for name, key in SOURCE_METADATA.items()
               if any(page.get(key) not in (None, metadata.UNWRITABLE) for page in pages)]
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


def _write(frames, durations, pages, left_out, fmt, out: io.BytesIO) -> bytes:
    """One try at writing the frames without the `left_out` metadata (SOURCE_METADATA's names), nor
    what a page holds UNWRITABLE, into `out`, a new buffer each try (a failed try leaves a partial
    file behind)."""
    left_out_keys = {SOURCE_METADATA[name] for name in left_out}
    sources = pages
    pages = [{key: value for key, value in page.items()
              if key not in left_out_keys and value is not metadata.UNWRITABLE} for page in pages]
    for index, frame in enumerate(frames):
        # A failed multi-frame save leaves its parameters on the frames it appended, and the
        # next try would take them up again.
        frame.encoderinfo = {}
        # A frame's info, copied from the source's by the transpose, is where writers look for
        # what they are not passed (the TIFF writer for compression and icc_profile, the PNG
        # writer for icc_profile and transparency, pillow-heif for a later image's own): what is
        # left out goes from there too.
        source = sources[index] if len(sources) == len(frames) else sources[0]
        for key in left_out_keys | {key for key, value in source.items() if value is metadata.UNWRITABLE}:
            frame.info.pop(key, None)
    prepared = fmt.prepare_write(frames, pages)
    params = dict(pages[0])
    if len(frames) > 1:
        params.update(save_all=True, append_images=frames[1:])
        if all(d is not None for d in durations):
            params["duration"] = durations
    fmt.save(frames[0], out, params)
    return fmt.finish_write(out.getvalue(), frames, prepared)
