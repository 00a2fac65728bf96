"""JPEG (service/formats/jpeg.py, jpeg_lossless.py): lossless and re-encoded flips, scans, segments, samples."""

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageOps, JpegImagePlugin

from loadtest.memory import allocator_environment
from service import imaging
from service.formats import jpeg, jpeg_lossless
from service.sample import make_sample
from tests.crafted_jpeg import many_scans_jpeg
from tests.flips import (
    PHONE_PEAK_SCRIPT,
    SRGB,
    exif_pixel_dimensions,
    exif_tags,
    jpeg_with_unwritable_exif,
    with_pixel_dimensions,
)
from tests.pictures import (
    decode,
    encode,
    photo,
    psnr,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("L", {"quality": 85}),
        ("RGB", {"quality": 85, "subsampling": 0}),
        ("RGB", {"quality": 85, "subsampling": 1}),
        ("RGB", {"quality": 75, "subsampling": 2}),
        ("RGB", {"quality": 95, "progressive": True}),
        ("CMYK", {"quality": 85}),
    ],
)
def test_jpeg_keeps_tables_subsampling_and_quality(mode, params):
    source = encode(photo((333, 250), mode), "JPEG", **params)
    original = decode(source)

    result = imaging.flip(source)
    flipped = decode(result.data)
    twice = decode(imaging.flip(result.data).data)

    assert flipped.mode == original.mode
    assert flipped.quantization == original.quantization
    assert JpegImagePlugin.get_sampling(flipped) == JpegImagePlugin.get_sampling(original)
    assert bool(flipped.info.get("progressive")) == bool(params.get("progressive"))
    assert psnr(flipped, original.transpose(DOWN)) > 40
    assert psnr(twice, original) > 40
    # Same tables, so the size barely moves; a fixed quality would change it a lot.
    assert abs(len(result.data) - len(source)) < 0.1 * len(source)


def test_mpo_from_a_phone_is_written_as_jpeg():
    first, second = photo((120, 90)), photo((60, 45))
    source = encode(first, "MPO", save_all=True, append_images=[second])
    result = imaging.flip(source)
    assert (result.format, result.frames) == ("JPEG", 1)
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def test_exif_that_cannot_be_written_again_is_kept_by_a_lossless_flip(turbojpeg):
    # Moved in the DCT domain, the same EXIF is kept as it is: no tag of it needs writing.
    source = jpeg_with_unwritable_exif()

    result = imaging.flip(source)

    assert result.dropped == ()
    assert decode(result.data).getexif()[ExifTags.Base.Make] == "flipfleet camera"


@pytest.mark.parametrize(("lossless", "path"), [(True, "lossless"), (False, "re-encoded")])
@pytest.mark.parametrize(("orientation", "size"), [(6, (64, 128)), (3, (128, 64))], ids=["turned", "upside-down"])
def test_the_jpeg_exif_width_and_height_are_the_flipped_pictures(turbojpeg, lossless, path, orientation, size):
    result = imaging.flip(with_pixel_dimensions("JPEG", orientation), lossless=lossless)
    assert result.path == path
    assert exif_pixel_dimensions(result.data) == decode(result.data).size == size


@pytest.mark.parametrize(("mode", "params", "refused"), [
    ("RGB", {}, False), ("RGB", {"subsampling": 0}, True), ("CMYK", {}, True), ("L", {}, False),
], ids=["420", "444", "cmyk", "grey"])
def test_a_jpeg_of_more_samples_a_pixel_counts_its_pixels_for_more(mode, params, refused):
    # 10,000 pixels against a limit of 12,000: 13/8 and 17/8 of them are over it.
    source = encode(photo((100, 100)).convert(mode), "JPEG", **params)
    limits = replace(imaging.NO_LIMITS, max_pixels=12_000)
    if refused:
        with pytest.raises(imaging.TooLarge, match="JPEG of [34] samples a pixel pictures"):
            imaging.flip(source, limits=limits)
    else:
        assert imaging.flip(source, limits=limits).height == 100


# name -> (mode, save params) of JPEGs Pillow writes; 320x240 is a multiple of every MCU.
JPEGS = {
    "baseline 4:2:0": ("RGB", {}),
    "4:2:2": ("RGB", {"subsampling": "4:2:2"}),
    "4:4:4": ("RGB", {"subsampling": "4:4:4"}),
    "grey": ("L", {}),
    "CMYK": ("CMYK", {}),
    "progressive": ("RGB", {"progressive": True}),
    "restart markers": ("RGB", {"restart_marker_blocks": 4}),
    "restart rows, 4:4:4": ("RGB", {"restart_marker_rows": 1, "subsampling": "4:4:4"}),
    "optimised tables": ("RGB", {"optimize": True}),
}


# What TurboJPEG writes afresh rather than keeps (restart markers, optimised Huffman tables):
# two flips give the same coefficients, coded as Pillow codes them without these.
REWRITTEN = ("restart_marker_blocks", "restart_marker_rows", "optimize")


def _jpeg(name: str, size=(320, 240), rewritten: bool = True, **extra) -> bytes:
    """`rewritten`: with what TurboJPEG writes afresh (REWRITTEN), if `name` has any."""
    mode, params = JPEGS[name]
    if not rewritten:
        params = {key: value for key, value in params.items() if key not in REWRITTEN}
    return encode(photo(size, mode), "JPEG", quality=90, **params, **extra)


def _largest_difference(a: Image.Image, b: Image.Image) -> int:
    assert (a.mode, a.size) == (b.mode, b.size)
    extrema = ImageChops.difference(a, b).getextrema()
    return extrema[1] if a.mode == "L" else max(high for _, high in extrema)


# A decoder's rounding of mirrored blocks: a left-right flip's pixels may differ from Pillow's
# transpose of the decoded source by this much (tests/test_jpeg_lossless.py, BOUNDS); a
# top-bottom flip's are equal.
ACROSS_ROUNDING = 5


@pytest.mark.parametrize("name", JPEGS)
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_lossless_jpeg_flip_twice_gives_the_same_bytes(turbojpeg, name, direction):
    source = _jpeg(name)
    once = imaging.flip(source, direction)
    twice = imaging.flip(once.data, direction)

    assert (once.path, once.reason, once.format, once.frames) == ("lossless", "", "JPEG", 1)
    assert twice.data == _jpeg(name, rewritten=False)  # the source itself, unless it has REWRITTEN
    expected = decode(source).transpose(imaging.DIRECTIONS[direction])
    flipped = decode(once.data)
    assert (flipped.size, flipped.mode) == ((once.width, once.height), expected.mode)
    assert bool(flipped.info.get("progressive")) == bool(decode(source).info.get("progressive"))
    if direction == "vertical":
        assert flipped.tobytes() == expected.tobytes()
    else:
        assert _largest_difference(flipped, expected) <= ACROSS_ROUNDING


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_lossless_jpeg_flip_of_every_orientation(turbojpeg, orientation, direction):
    exif = Image.Exif()
    exif[imaging.ORIENTATION], exif[ExifTags.Base.Make] = orientation, "flipfleet camera"
    source = _jpeg("baseline 4:2:0", exif=exif.tobytes())
    shown = jpeg_lossless.transform(source, imaging.ORIENTATION_TRANSPOSE.get(orientation))  # no tag left

    once = imaging.flip(source, direction)
    twice = imaging.flip(once.data, direction)

    assert once.path == twice.path == "lossless"
    assert twice.data == shown  # the orientation applied once, the two flips undone
    flipped = decode(once.data)
    expected = ImageOps.exif_transpose(decode(source)).transpose(imaging.DIRECTIONS[direction])
    assert flipped.size == expected.size == (once.width, once.height)
    assert _largest_difference(flipped, expected) <= ACROSS_ROUNDING
    assert imaging.ORIENTATION not in flipped.getexif()
    assert flipped.getexif()[ExifTags.Base.Make] == "flipfleet camera"


@pytest.mark.parametrize(
    ("size", "direction", "path"),
    [
        ((320, 250), "vertical", "re-encoded; not aligned"),  # 250 rows: not a multiple of 4:2:0's 16
        ((320, 250), "horizontal", "lossless"),  # the partial row of blocks does not move
        ((250, 240), "horizontal", "re-encoded; not aligned"),
        ((250, 240), "vertical", "lossless"),
        ((333, 250), "vertical", "re-encoded; not aligned"),
    ],
)
def test_a_jpeg_not_aligned_along_the_flip_is_re_encoded_and_says_so(turbojpeg, size, direction, path):
    source = _jpeg("baseline 4:2:0", size=size)
    result = imaging.flip(source, direction)
    assert f"{result.path}; {result.reason}".removesuffix("; ") == path
    assert decode(result.data).size == size
    assert psnr(decode(result.data), decode(source).transpose(imaging.DIRECTIONS[direction])) > 40


def test_lossless_false_re_encodes(turbojpeg):
    source = _jpeg("baseline 4:2:0")
    result = imaging.flip(source, lossless=False)
    assert (result.path, result.reason) == ("re-encoded", "asked")
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40
    assert result.data != imaging.flip(source).data


def test_without_the_library_a_jpeg_is_re_encoded(monkeypatch):
    monkeypatch.setattr(jpeg_lossless, "_loaded", [None])
    source = _jpeg("baseline 4:2:0")
    result = imaging.flip(source)
    assert (result.path, result.reason) == ("re-encoded", "library missing")
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def test_arithmetic_coding_is_re_encoded(turbojpeg):
    # Pillow writes no arithmetic coding: the start of frame says so, which is what is looked at.
    data = bytearray(_jpeg("baseline 4:2:0"))
    data[data.index(b"\xff\xc0") + 1] = 0xC9
    result = imaging.flip(bytes(data))
    assert (result.path, result.reason) == ("re-encoded", "arithmetic coding")


def test_lossless_mpo_gives_its_main_picture(turbojpeg):
    main = photo((320, 240))
    source = encode(main, "MPO", save_all=True, append_images=[photo((160, 120))], quality=90)
    result = imaging.flip(source)
    assert (result.path, result.format, result.frames) == ("lossless", "JPEG", 1)
    assert decode(result.data).format == "JPEG"
    assert result.data == imaging.flip(encode(main, "JPEG", quality=90)).data


def test_lossless_jpeg_keeps_its_metadata(turbojpeg):
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    source = _jpeg("baseline 4:2:0", exif=exif_tags(Orientation=3, Make="flipfleet camera"), icc_profile=SRGB,
                   xmp=xmp, comment=b"flipfleet", dpi=(300, 300))
    result = imaging.flip(source)
    flipped = decode(result.data)
    assert (result.path, result.dropped) == ("lossless", ())
    assert dict(flipped.getexif()) == {ExifTags.Base.Make: "flipfleet camera"}
    assert (flipped.info["icc_profile"], flipped.info["xmp"], flipped.info["comment"]) == (SRGB, xmp, b"flipfleet")
    assert flipped.info["dpi"] == (300, 300)


@pytest.mark.parametrize("cut", ["in the first scan", "half way", "without EOI"])
def test_a_truncated_jpeg_that_could_be_flipped_losslessly_is_not_an_image(turbojpeg, cut):
    source = _jpeg("baseline 4:2:0")
    end = {"in the first scan": source.index(b"\xff\xda") + 20, "half way": len(source) // 2,
           "without EOI": len(source) - 2}[cut]
    # Cut in the first scan, it is too short for its blocks: refused before TurboJPEG sees it.
    with pytest.raises(imaging.NotAnImage, match="truncated"):
        imaging.flip(source[:end])


# Data with a libjpeg warning, which TurboJPEG refuses (TJFLAG_STOPONWARNING) and Pillow's decoder
# lets pass: flipped as before, by Pillow.
@pytest.mark.parametrize("damage", ["junk before a marker", "scan data overwritten"])
def test_what_pillow_tolerates_but_turbojpeg_does_not_is_re_encoded(turbojpeg, damage):
    source = _jpeg("baseline 4:2:0")
    scan = source.index(b"\xff\xda")
    data = {"junk before a marker": source[:20] + b"\x00\x01\x02" + source[20:],
            "scan data overwritten": source[: scan + 500] + bytes(range(200, 240)) + source[scan + 540 :]}[damage]
    result = imaging.flip(data)
    assert (result.path, result.reason) == ("re-encoded", "damaged")


@pytest.fixture
def transforms(monkeypatch):
    """Records each call of the lossless transform."""
    calls, transform = [], jpeg_lossless.transform
    monkeypatch.setattr(jpeg_lossless, "transform", lambda *args: calls.append(args) or transform(*args))
    return calls


@pytest.mark.parametrize(
    ("data", "limits", "error"),
    [
        (_jpeg("baseline 4:2:0"), replace(imaging.NO_LIMITS, max_pixels=320 * 240 - 1), imaging.TooLarge),
        (many_scans_jpeg((320, 240), scans=100), replace(imaging.NO_LIMITS, max_scans=100), imaging.TooCostly),
    ],
    ids=["pixels", "scans"],
)
def test_lossless_jpeg_limits_are_checked_before_the_transform(turbojpeg, transforms, data, limits, error):
    with pytest.raises(error):
        imaging.flip(data, limits=limits)
    assert transforms == []


def test_a_lossless_flip_over_the_answer_limit_is_refused(turbojpeg, transforms):
    source = _jpeg("baseline 4:2:0")
    size = len(imaging.flip(source).data)
    with pytest.raises(imaging.TooCostly, match="largest answer"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_answer_bytes=size - 1))
    assert len(transforms) == 2
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_answer_bytes=size)).path == "lossless"


def test_a_lossless_flip_past_its_deadline_is_given_up_after_the_transform(turbojpeg, transforms):
    # tjTransform is one C call: the deadline is looked at after it, and its answer thrown away.
    poison = many_scans_jpeg((4000, 3000), scans=400)  # 401 scans: about 0.5 s of TurboJPEG's work
    started = time.perf_counter()
    with pytest.raises(imaging.TooCostly, match="took longer than 0.1 s"):
        imaging.flip(poison, limits=replace(imaging.NO_LIMITS, max_seconds=0.1))
    print(f"given up after {time.perf_counter() - started:.2f} s (deadline 0.1 s, one transform)")
    assert len(transforms) == 1


def test_a_lossless_flip_is_timed_as_the_flip(turbojpeg):
    result = imaging.flip(_jpeg("baseline 4:2:0", size=(1600, 1200)))
    assert result.path == "lossless"
    assert result.spans["flip"] > 0 and "encode" not in result.spans


THREE_SAMPLES, FOUR_SAMPLES = (imaging.PEAK_BYTES_PER_PIXEL[kind, False]
                               for kind in (jpeg.THREE_SAMPLES, jpeg.FOUR_SAMPLES))


@pytest.mark.parametrize(("mode", "params", "lossless", "allowed"), [
    ("RGB", {}, True, imaging.LIMITS_BYTES_PER_PIXEL),  # 4:2:0, as cameras write
    ("RGB", {"progressive": True}, False, imaging.LIMITS_BYTES_PER_PIXEL),
    ("RGB", {"subsampling": 0}, True, THREE_SAMPLES),
    ("RGB", {"subsampling": 0, "progressive": True}, False, THREE_SAMPLES),
    ("CMYK", {}, True, FOUR_SAMPLES),
    ("CMYK", {"progressive": True}, False, FOUR_SAMPLES),
], ids=["420-lossless", "420-progressive", "444-lossless", "444-progressive", "cmyk-lossless", "cmyk-progressive"])
def test_a_jpeg_flip_holds_at_most_the_memory_its_samples_count_for(tmp_path, mode, params, lossless, allowed):
    size = (2016, 1512)
    source = tmp_path / "photo.jpg"
    source.write_bytes(encode(decode(make_sample(*size)).convert(mode), "JPEG", quality=90, **params))
    script = PHONE_PEAK_SCRIPT.replace("imaging.flip(data)", f"imaging.flip(data, lossless={lossless})")
    done = subprocess.run([sys.executable, "-c", script, str(source)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent, env=allocator_environment())
    assert done.returncode == 0, done.stderr
    peak, pixels = int(done.stdout), size[0] * size[1]
    print(f"JPEG {mode} {params} lossless={lossless}: {peak / pixels:.1f} bytes a pixel (counted as {allowed})")
    assert peak < allowed * pixels + 16 * 2**20

