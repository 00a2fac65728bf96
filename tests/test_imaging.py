"""The flow every format shares (service/imaging.py): directions, orientations, limits, deadline, errors."""

import io
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from loadtest.memory import allocator_environment
from service import imaging
from service.formats import webp
from service.sample import make_sample
from tests.corpus import malformed_requests
from tests.crafted_jpeg import many_scans_jpeg
from tests.flips import PHONE_PEAK_SCRIPT, exif_tags
from tests.pictures import (
    animation,
    decode,
    encode,
    gif_declaring,
    jpeg_declaring,
    noise_png,
    photo,
    picture,
    png_declaring,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM
ACROSS = Image.Transpose.FLIP_LEFT_RIGHT


# (format, mode, save params): every lossless format with every mode it can hold.
LOSSLESS = [
    *[("PNG", mode, {}) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")],
    *[("TIFF", mode, {}) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK")],
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "RGB", {"compression": "tiff_adobe_deflate"}),
    *[("BMP", mode, {}) for mode in ("1", "L", "P", "RGB")],
    *[("GIF", mode, {}) for mode in ("L", "P")],
    *[("WEBP", mode, {"lossless": True, "exact": True}) for mode in ("RGB", "RGBA")],
]


@pytest.mark.parametrize(("fmt", "mode", "params"), LOSSLESS, ids=lambda v: str(v))
@pytest.mark.parametrize(("direction", "method"), [("vertical", DOWN), ("horizontal", ACROSS)])
def test_lossless_flip_is_exact(fmt, mode, params, direction, method):
    source = encode(picture(mode), fmt, **params)
    original = decode(source)

    result = imaging.flip(source, direction)
    flipped = decode(result.data)

    assert result.format == fmt == flipped.format
    assert result.media_type == imaging.MEDIA_TYPES[fmt]
    assert flipped.mode == original.mode
    assert flipped.tobytes() == original.transpose(method).tobytes()
    assert flipped.getpalette() == original.transpose(method).getpalette()
    assert flipped.info.get("transparency") == original.info.get("transparency")
    assert decode(imaging.flip(result.data, direction).data).tobytes() == original.tobytes()


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_flips_every_frame_and_keeps_timing(fmt, params):
    source, durations = animation(fmt, frames=4, **params)

    result = imaging.flip(source)

    assert result.frames == 4
    original, flipped = Image.open(io.BytesIO(source)), Image.open(io.BytesIO(result.data))
    assert flipped.n_frames == 4
    assert flipped.info["loop"] == 3
    for index, duration in enumerate(durations):
        original.seek(index)
        flipped.seek(index)
        flipped.load()
        assert flipped.info["duration"] == duration
        assert flipped.convert("RGBA").tobytes() == original.convert("RGBA").transpose(DOWN).tobytes()


def test_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        imaging.flip(encode(picture("L"), "PNG"), "diagonal")


def _truncated(fmt, fraction):
    data = encode(photo((200, 150)), fmt)
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text and not a picture",
        bytes(range(256)) * 40,
        *[_truncated(fmt, f) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP") for f in (0.1, 0.6)],
    ],
    ids=lambda d: f"{len(d)}B:{d[:4]!r}",
)
def test_damaged_or_foreign_data_is_not_an_image(data):
    with pytest.raises(imaging.NotAnImage):
        imaging.flip(data)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_other_real_formats_are_unsupported(fmt):
    with pytest.raises(imaging.UnsupportedFormat, match=fmt):
        imaging.flip(encode(picture("RGB"), fmt))


@pytest.mark.parametrize(
    "data",
    [png_declaring(8_000, 8_000), png_declaring(100_000, 100_000), gif_declaring(65_535, 65_535)],
    ids=["png-64MP", "png-10GP-pillow-bomb", "gif-4GP"],
)
def test_pixel_limit_is_checked_from_the_header(data):
    with pytest.raises(imaging.TooLarge, match="pixels"):
        imaging.flip(data, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))


@pytest.mark.parametrize(
    "data", [jpeg_declaring(7_000, 7_000), jpeg_declaring(6_000, 4_000), png_declaring(7_000, 7_000),
             png_declaring(2_000, 1_000)],
    ids=["jpeg-49MP", "jpeg-24MP", "png-49MP", "png-2MP"],
)
def test_a_header_claiming_more_pixels_than_the_data_can_hold_is_not_an_image(data):
    # Within the pixel limit, the decoders would make up the missing pixels (grey, black) and flip them.
    with pytest.raises(imaging.NotAnImage, match="more than its .* bytes can hold"):
        imaging.flip(data)


@pytest.mark.parametrize(
    ("mode", "fmt", "params"),
    [("RGB", "PNG", {"compress_level": 9}), ("1", "PNG", {"optimize": True}), ("P", "PNG", {"optimize": True}),
     ("RGBA", "PNG", {"compress_level": 9}), ("RGB", "JPEG", {"quality": 1, "optimize": True}),
     ("L", "JPEG", {"quality": 1, "progressive": True}), ("CMYK", "JPEG", {"quality": 1, "optimize": True})],
    ids=lambda value: value if isinstance(value, str) else "-".join(f"{k}={v}" for k, v in value.items()),
)
def test_the_most_compressed_pictures_are_over_the_floor(mode, fmt, params):
    # One colour at the encoders' best: as few bytes a pixel as a real picture of its size gets.
    data = encode(Image.new(mode, (3_000, 2_000)), fmt, **params)
    assert imaging.flip(data, lossless=False).height == 2_000


def test_frame_limit():
    source, _ = animation("GIF", frames=6)
    with pytest.raises(imaging.TooLarge, match="more than 5 frames"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=5))
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=6)).frames == 6


def test_total_pixel_limit_over_frames():
    source, _ = animation("GIF", frames=6, size=(100, 100))
    with pytest.raises(imaging.TooLarge, match="add up"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_total_pixels=50_000))


def test_a_bug_of_ours_is_not_reported_as_damaged_data(monkeypatch):
    def broken(*args):
        raise KeyError("a bug, not the picture's fault")

    monkeypatch.setattr(imaging.FORMATS["PNG"], "save_params", broken)
    with pytest.raises(KeyError):
        imaging.flip(encode(picture("RGB"), "PNG"))


def test_bad_parameters_of_ours_reach_the_encoder_as_a_bug_not_as_damaged_data(monkeypatch):
    # Our JPEG parameters, made wrong: Pillow's encoder refuses them with a ValueError or TypeError.
    monkeypatch.setattr(imaging.FORMATS["JPEG"], "save_params", lambda *args: {"qtables": "not tables"})
    with pytest.raises((ValueError, TypeError)):
        imaging.flip(encode(photo((64, 48)), "JPEG"), lossless=False)


@pytest.mark.parametrize("error", [
    RuntimeError("tiff codec initialization failed"), struct.error("unpack requires a buffer of 8 bytes"),
    ValueError("tile cannot extend outside image"), MemoryError(),
])
def test_errors_while_decoding_are_damaged_data(monkeypatch, error):
    # Within the pixel limit (checked from the header first) a MemoryError is a damaged field
    # claiming gigabytes, not a replica short of memory: a retry elsewhere would fail the same.
    from PIL import TiffImagePlugin

    def load(self):
        raise error

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load", load)
    with pytest.raises(imaging.NotAnImage, match="damaged"):
        imaging.flip(encode(picture("RGB"), "TIFF"))


def test_a_large_body_in_another_format_is_named_from_its_header_alone():
    # EPS's plugin reads a whole body line by line when given it: about 20 s for these 25 MB.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n%%EndComments\n" + b"a\n" * 12_500_000
    started = time.perf_counter()
    with pytest.raises(imaging.UnsupportedFormat, match="EPS pictures are not supported"):
        imaging.flip(eps)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("data", "limits"),
    [(many_scans_jpeg((8000, 6000), scans=400), replace(imaging.NO_LIMITS, max_seconds=1)),
     (noise_png((4000, 3000)), replace(imaging.NO_LIMITS, max_seconds=0.3))],
    ids=["decoding: 400 scans over 48 MP", "encoding: 12 MP of random pixels as PNG"],
)
def test_a_flip_past_its_deadline_is_given_up(data, limits):
    started = time.perf_counter()
    with pytest.raises(imaging.TooCostly, match="took longer than"):
        imaging.flip(data, limits=limits, lossless=False)  # the lossless path: see test_lossless_jpeg_*
    took = time.perf_counter() - started
    print(f"given up after {took:.2f} s (deadline {limits.max_seconds} s)")
    # Given up at the next block of data read or written after the deadline, not at the end.
    assert took < limits.max_seconds + 1.0


@pytest.mark.parametrize("first", [None, *Image.Transpose], ids=lambda t: getattr(t, "name", "none"))
@pytest.mark.parametrize("then", [None, *Image.Transpose], ids=lambda t: getattr(t, "name", "none"))
def test_any_two_transposes_make_one(first, then):
    im = picture("RGB", (5, 3))
    step = im if first is None else im.transpose(first)
    step = step if then is None else step.transpose(then)
    once = imaging.compose(first, then)
    composed = im if once is None else im.transpose(once)
    assert (composed.size, composed.tobytes()) == (step.size, step.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_every_orientation_and_direction_is_what_a_viewer_shows_flipped(orientation, direction):
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = orientation
    source = encode(picture("RGB", (6, 4)), "PNG", exif=exif.tobytes())
    shown = ImageOps.exif_transpose(decode(source))
    expected = shown.transpose(imaging.DIRECTIONS[direction])
    flipped = decode(imaging.flip(source, direction).data)
    assert (flipped.size, flipped.tobytes()) == (expected.size, expected.tobytes())
    assert imaging.ORIENTATION not in flipped.getexif()


PEAK_SCRIPT = """
import sys
from pathlib import Path
from service import imaging

def high_water() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
imaging.flip(data)  # warm: imports, codecs
before = high_water()
imaging.flip(data)
print(high_water() - before if high_water() > before else 0, before)
"""


def test_one_flip_holds_at_most_two_copies_of_the_picture(tmp_path):
    # The 162 KB PNG of the measurement that found three copies: 7070x7070 of one colour, turned.
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = 6
    source = tmp_path / "flat.png"
    source.write_bytes(encode(Image.new("RGB", (7070, 7070), (20, 120, 200)), "PNG", exif=exif.tobytes()))
    frame = 7070 * 7070 * 4  # Pillow keeps RGB in 4 bytes a pixel
    # A process of its own, which has done one flip already: its high-water mark then rises by
    # what a second flip holds at once beyond what the first left behind.
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(source)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    grew, before = (int(v) for v in done.stdout.split())
    print(f"a flip of {source.stat().st_size:,} bytes (7070x7070, turned): the process peaked at "
          f"{(before + grew) / 2**20:.0f} MiB, {(before + grew) / frame:.2f} frames of {frame / 2**20:.0f} MiB")
    assert before + grew < 2.3 * frame + 64 * 2**20  # two frames, the interpreter and the codecs


def test_rows_count_for_the_memory_pillow_keeps_for_them():
    # One column of 100,000 rows: 100,000 pixels, and 16 bytes a row in Pillow's two copies.
    tall = encode(Image.new("L", (1, 100_000), 7), "PNG")
    assert imaging.flip(tall, limits=replace(imaging.NO_LIMITS, max_pixels=300_000)).height == 100_000
    with pytest.raises(imaging.TooLarge, match="its 100,000 rows cost as much memory as 200,000 more pixels"):
        imaging.flip(tall, limits=replace(imaging.NO_LIMITS, max_pixels=299_999))


def test_a_quarter_turns_rows_count_for_its_columns():
    # One row of 100,000 pixels, turned by its orientation: the turned copy has 100,000 rows.
    wide = encode(Image.new("L", (100_000, 1), 7), "PNG", exif=exif_tags(Orientation=6))
    assert imaging.flip(wide, limits=replace(imaging.NO_LIMITS, max_pixels=200_001)).height == 100_000
    with pytest.raises(imaging.TooLarge, match="its 1 rows and 100,000 once turned cost"):
        imaging.flip(wide, limits=replace(imaging.NO_LIMITS, max_pixels=200_000))
    unturned = encode(Image.new("L", (100_000, 1), 7), "PNG")
    assert imaging.flip(unturned, limits=replace(imaging.NO_LIMITS, max_pixels=100_002)).height == 1


@pytest.mark.parametrize(("fmt", "mode"), [(fmt, mode) for fmt in ("HEIF", "AVIF", "WEBP", webp.LOSSLESS)
                                           for mode in ("RGB", "RGBA")])
def test_a_flip_holds_at_most_the_memory_its_pixels_count_for(tmp_path, fmt, mode):
    # In a process of its own, as the replica runs (the allocator of the image): what one flip
    # holds at once above what the process held before it.
    size = (2016, 1512)  # 3 MP, a quarter of a phone's photo
    picture = decode(make_sample(*size)).convert("RGB")
    if mode == "RGBA":
        picture.putalpha(picture.convert("L"))
    source = tmp_path / "phone"
    if fmt == webp.LOSSLESS:
        source.write_bytes(encode(picture, "WEBP", lossless=True, quality=webp.LOSSLESS_EFFORT))
    else:
        source.write_bytes(encode(picture, fmt, **imaging.writer_params(fmt, picture)))  # the fast settings
    done = subprocess.run([sys.executable, "-c", PHONE_PEAK_SCRIPT, str(source)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent, env=allocator_environment())
    assert done.returncode == 0, done.stderr
    peak, pixels = int(done.stdout), size[0] * size[1]
    allowed = imaging.PEAK_BYTES_PER_PIXEL[fmt, mode == "RGBA"]
    print(f"{fmt} {mode}: one flip of {pixels / 1e6:.1f} MP held {peak / 2**20:.0f} MiB at most, "
          f"{peak / pixels:.1f} bytes a pixel (counted as {allowed})")
    assert peak < allowed * pixels + 16 * 2**20  # and the codecs' fixed buffers



def _every_kind_of_picture() -> dict[str, bytes]:
    """A picture of every format and mode the service writes, animations, pages, and the
    malformed corpus's pictures that still decode."""
    pictures = {f"{fmt} {mode} {params}": encode(picture(mode), fmt, **params) for fmt, mode, params in LOSSLESS}
    pictures |= {f"{fmt} photo": encode(photo(), fmt) for fmt in ("JPEG", "WEBP", "AVIF", "HEIF")}
    pictures |= {f"{fmt} animation": animation(fmt)[0] for fmt in ("GIF", "PNG", "WEBP", "AVIF", "TIFF")}
    pictures |= {f"malformed {bad.name}": bad.body for bad in malformed_requests() if bad.may_decode and bad.body}
    return pictures


def test_a_picture_sent_twice_gets_the_same_bytes_twice():
    # An answer is a function of its picture: nothing of the process, its memory or its clock
    # (a second apart: file formats keep times in seconds) in it.
    def answers():
        found = {}
        for name, data in pictures.items():
            try:
                found[name] = imaging.flip(data).data
            except imaging.ImageError as exc:
                found[name] = str(exc).encode()
        return found

    pictures = _every_kind_of_picture()
    first = answers()
    time.sleep(1.1)
    assert [name for name, data in answers().items() if data != first[name]] == []
