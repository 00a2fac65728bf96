import io
import random
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageOps, ImageSequence, JpegImagePlugin, PngImagePlugin

from loadtest.memory import allocator_environment
from service import imaging, jpeg_lossless, tiff
from service.sample import make_sample
from tests.pictures import (
    SIZE,
    animation,
    bmp_rle8,
    decode,
    encode,
    exif_of_entries,
    gif_comment_of_sub_blocks,
    gif_declaring,
    gif_of,
    gif_padded,
    jpeg_declaring,
    jpeg_of_precision,
    jpeg_padded,
    local_palettes_gif,
    many_scans_jpeg,
    moving_square_gif,
    noise_png,
    photo,
    picture,
    png_16_bits,
    png_chunk,
    png_declaring,
    png_idat_padded,
    png_padded,
    psnr,
    strips_tiff,
    tiff_in_one_tile,
    tiff_of_entries,
    tiff_with_later_pages_exif,
    webp_padded,
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


def test_tiff_keeps_its_compression():
    source = encode(picture("RGB"), "TIFF", compression="tiff_lzw")
    assert decode(imaging.flip(source).data).info["compression"] == "tiff_lzw"


def test_bilevel_gif_keeps_its_colours():
    # GIF has no bilevel mode: Pillow reads it as L and writes it as P, same colours.
    original = decode(encode(picture("1"), "GIF"))
    flipped = decode(imaging.flip(encode(picture("1"), "GIF")).data)
    assert flipped.convert("RGB").tobytes() == original.convert("RGB").transpose(DOWN).tobytes()


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


def test_exif_orientation_is_applied_then_dropped():
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = 6  # the camera was turned: viewers rotate 90 degrees clockwise
    exif[0x010F] = "flipfleet camera"  # Make: other tags must survive
    upright = photo((320, 240))
    source = encode(upright, "JPEG", quality=95, exif=exif.tobytes())

    flipped = decode(imaging.flip(source).data)

    assert flipped.size == (240, 320)
    assert imaging.ORIENTATION not in flipped.getexif()
    assert flipped.getexif()[0x010F] == "flipfleet camera"
    assert psnr(flipped, upright.transpose(Image.Transpose.ROTATE_270).transpose(DOWN)) > 40


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_icc_profile_is_kept(fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(photo((64, 48)), fmt, icc_profile=icc)
    assert decode(imaging.flip(source).data).info["icc_profile"] == icc


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


GIFS = {
    # A sticker: a square moving over a transparent background, each frame cleared (2) or
    # restored (3) before the next.
    "disposal-2": moving_square_gif(2),
    "disposal-3": moving_square_gif(3),
    # The second frame shows more colours than one palette holds, from two images' own tables.
    "local-palettes": local_palettes_gif(),
    # An image reaching past the logical screen's right edge: Pillow widens the screen to it.
    "beyond-the-screen": gif_of((48, 32), [(picture("P", (32, 32)), (32, 0), 100, 0, None)]),
}


def _viewed(data: bytes) -> tuple[list, list, int | None]:
    """Every frame as a viewer shows it (composited, RGBA), each frame's duration, and the loop count."""
    with Image.open(io.BytesIO(data)) as im:
        frames = [frame.convert("RGBA") for frame in ImageSequence.Iterator(im)]
        return frames, [frame.info.get("duration") for frame in frames], im.info.get("loop")


def test_the_animated_gifs_show_what_the_tests_need():
    opaque = [[sum(1 for pixel in frame.get_flattened_data() if pixel[3]) for frame in _viewed(GIFS[name])[0]]
              for name in ("disposal-2", "disposal-3")]
    assert opaque == [[100, 100, 100]] * 2
    assert [len(frame.getcolors(4096)) for frame in _viewed(GIFS["local-palettes"])[0]] == [256, 384]


@pytest.mark.parametrize("name", GIFS)
@pytest.mark.parametrize(("direction", "method"), [("vertical", DOWN), ("horizontal", ACROSS)])
def test_every_gif_frame_is_flipped_exactly_as_a_viewer_shows_it(name, direction, method):
    frames, durations, loop = _viewed(GIFS[name])

    result = imaging.flip(GIFS[name], direction)
    flipped, flipped_durations, flipped_loop = _viewed(result.data)
    twice = _viewed(imaging.flip(result.data, direction).data)[0]

    assert result.frames == len(flipped) == len(frames)
    assert [frame.tobytes() for frame in flipped] == [frame.transpose(method).tobytes() for frame in frames]
    assert [frame.tobytes() for frame in twice] == [frame.tobytes() for frame in frames]
    assert (flipped_durations, flipped_loop) == (durations, loop)


def test_lossy_webp_stays_lossy_and_close():
    source = encode(photo(), "WEBP", quality=80)
    result = imaging.flip(source)
    assert b"VP8 " in result.data[:64]
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 35


def test_webp_lossless_detection():
    assert imaging._webp_is_lossless(encode(picture("RGB"), "WEBP", lossless=True))
    assert not imaging._webp_is_lossless(encode(picture("RGB"), "WEBP", quality=80))
    assert imaging._webp_is_lossless(animation("WEBP", lossless=True)[0])
    assert not imaging._webp_is_lossless(animation("WEBP", quality=80)[0])


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


@pytest.mark.parametrize("bits", [12, 16])
def test_a_jpeg_of_more_than_8_bits_a_sample_is_unsupported(bits):
    # Pillow reads 8-bit JPEG only: the picture is one the service recognises but cannot read.
    with pytest.raises(imaging.UnsupportedFormat, match=f"{bits}-bit JPEG pictures are not supported"):
        imaging.flip(jpeg_of_precision(bits))


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


def test_a_webp_of_more_chunks_than_any_picture_has_is_refused_before_its_pixels():
    # Each empty chunk is 8 bytes: 25 MB of them would cost seconds to walk.
    with pytest.raises(imaging.TooCostly, match="chunks"):
        imaging.flip(webp_padded(imaging.WEBP_MOST_CHUNKS + 1))
    flipped = imaging.flip(webp_padded(imaging.WEBP_MOST_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


@pytest.mark.parametrize("lossless", [True, False])
def test_a_jpeg_of_more_segments_than_any_picture_has_is_refused_before_it_is_read(lossless):
    # TurboJPEG's transform of 100,000 empty comments takes seconds, in one call the deadline cannot stop.
    with pytest.raises(imaging.TooCostly, match="segments"):
        imaging.flip(jpeg_padded(imaging.JPEG_MOST_SEGMENTS), lossless=lossless)
    assert imaging.flip(jpeg_padded(imaging.JPEG_MOST_SEGMENTS - 10), lossless=lossless).height == 16


def test_a_png_of_more_chunks_than_any_picture_has_is_refused_before_pillow_reads_them():
    # Each empty chunk is 12 bytes: 25 MB of them take Pillow past the deadline.
    with pytest.raises(imaging.TooCostly, match="chunks before its pixels"):
        imaging.flip(png_padded(imaging.PNG_MOST_CHUNKS))
    flipped = imaging.flip(png_padded(imaging.PNG_MOST_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


def test_a_png_of_more_chunks_in_all_than_any_picture_has_is_refused_before_pillow_reads_them():
    # Empty IDAT chunks are 12 bytes each too: 2 million took Pillow 3.2 s to decode.
    with pytest.raises(imaging.TooCostly, match="more than 100,000 chunks, "):
        imaging.flip(png_idat_padded(imaging.PNG_MOST_ALL_CHUNKS))
    flipped = imaging.flip(png_idat_padded(imaging.PNG_MOST_ALL_CHUNKS - 10))
    assert decode(flipped.data).tobytes() == picture("RGB", (16, 16)).transpose(DOWN).tobytes()


# 25 MB of empty extensions (3 bytes each) would cost the whole deadline to walk; Pillow reads an
# extension a sub-block a loop turn: a comment of 12 million one-byte sub-blocks took the deadline.
@pytest.mark.parametrize(("padded", "bound", "refusal", "under"), [
    (gif_padded, imaging.GIF_MOST_BLOCKS, "more than 20,000 blocks", 10),
    (gif_comment_of_sub_blocks, imaging.GIF_MOST_SUB_BLOCKS, "more than 200,000 sub-blocks", 100),
], ids=["blocks", "sub-blocks"])
def test_a_gif_of_more_blocks_than_any_animation_has_is_refused_before_its_pixels(padded, bound, refusal, under):
    with pytest.raises(imaging.TooCostly, match=refusal):
        imaging.flip(padded(bound))
    flipped = imaging.flip(padded(bound - under))
    assert decode(flipped.data).convert("RGB").tobytes() == picture("P", (16, 16)).convert("RGB").transpose(
        DOWN).tobytes()


def test_frame_limit():
    source, _ = animation("GIF", frames=6)
    with pytest.raises(imaging.TooLarge, match="more than 5 frames"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=5))
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_frames=6)).frames == 6


def test_total_pixel_limit_over_frames():
    source, _ = animation("GIF", frames=6, size=(100, 100))
    with pytest.raises(imaging.TooLarge, match="add up"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_total_pixels=50_000))


def test_mpo_from_a_phone_is_written_as_jpeg():
    first, second = photo((120, 90)), photo((60, 45))
    source = encode(first, "MPO", save_all=True, append_images=[second])
    result = imaging.flip(source)
    assert (result.format, result.frames) == ("JPEG", 1)
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def test_a_bug_of_ours_is_not_reported_as_damaged_data(monkeypatch):
    def broken(im, data):
        raise KeyError("a bug, not the picture's fault")

    monkeypatch.setitem(imaging._FORMAT_PARAMS, "PNG", broken)
    with pytest.raises(KeyError):
        imaging.flip(encode(picture("RGB"), "PNG"))


def test_bad_parameters_of_ours_reach_the_encoder_as_a_bug_not_as_damaged_data(monkeypatch):
    # Our JPEG parameters, made wrong: Pillow's encoder refuses them with a ValueError or TypeError.
    monkeypatch.setitem(imaging._FORMAT_PARAMS, "JPEG", lambda im, data: {"qtables": "not tables"})
    with pytest.raises((ValueError, TypeError)):
        imaging.flip(encode(photo((64, 48)), "JPEG"), lossless=False)


# --- Metadata the writer refuses, and damaged TIFFs (the issue's BigTIFF, Adobe deflate, 16-bit
# RGBa, no RowsPerStrip; tests/test_pillow_corpus.py runs the real files). Every picture Pillow
# reads comes back flipped, without only the metadata that cannot be written (Flipped.dropped).

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
EXIF_DIRECTORY = {0x9003: "2013:07:01 13:44:41", 0x829A: 0.01, 0xA002: 48}  # DateTimeOriginal...


def _handmade_tiff(size, bits, photometric, pixels, *, extra=None, deflate=False, planes=False, tags=None):
    """A classic TIFF written with Pillow's own directory writer, for layouts that Pillow reads
    but does not write itself (16 bits a sample, Adobe deflate with an EXIF directory, as
    Photoshop and Pixelmator write them; separate planes): one strip, or one per plane."""
    from PIL import TiffImagePlugin

    if planes:  # `pixels` interleaved, 8 bits a sample: one strip of each sample instead
        strips = [pixels[index :: len(bits)] for index in range(len(bits))]
    else:
        strips = [pixels]
    strips = [zlib.compress(strip) if deflate else strip for strip in strips]
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    ifd[256], ifd[257] = size
    ifd[258], ifd[259], ifd[262], ifd[277] = bits, 8 if deflate else 1, photometric, len(bits)
    ifd[278], ifd[284] = size[1], 2 if planes else 1
    if extra is not None:
        ifd[338] = extra  # ExtraSamples: 1 is associated alpha, what Pillow reads as "RGBa"
    for tag, value in (tags or {}).items():
        ifd[tag] = value
    # StripOffsets from the end of the directory: the writer moves them past it, to the data.
    ifd[273] = tuple(sum(len(strip) for strip in strips[:index]) for index in range(len(strips)))
    ifd[279] = tuple(len(strip) for strip in strips)
    out = io.BytesIO()
    out.write(b"II*\x00" + struct.pack("<I", 8))
    out.seek(ifd.save(out))
    out.write(b"".join(strips))
    return out.getvalue()


def _tiff_entries(data):
    """(directory offset, entry offset, tag, type) of every entry of a classic little-endian TIFF."""
    (ifd,) = struct.unpack("<I", data[4:8])
    while ifd:
        (count,) = struct.unpack("<H", data[ifd : ifd + 2])
        for index in range(count):
            at = ifd + 2 + 12 * index
            yield ifd, at, *struct.unpack("<HH", data[at : at + 4])
        (ifd,) = struct.unpack("<I", data[ifd + 2 + 12 * count : ifd + 6 + 12 * count])


def _without_tiff_tag(data, drop):
    """`data` with tag `drop` taken out of every directory (entries shifted up, count less one)."""
    out = bytearray(data)
    for ifd in sorted({ifd for ifd, _, tag, _ in _tiff_entries(data) if tag == drop}):
        (count,) = struct.unpack("<H", out[ifd : ifd + 2])
        entries = [out[ifd + 2 + 12 * i : ifd + 14 + 12 * i] for i in range(count)]
        kept = [entry for entry in entries if struct.unpack("<H", entry[:2])[0] != drop]
        tail = out[ifd + 2 + 12 * count : ifd + 6 + 12 * count]  # the next directory's offset
        out[ifd : ifd + 6 + 12 * count] = (
            struct.pack("<H", len(kept)) + b"".join(kept) + tail + bytes(12 * (count - len(kept)))
        )
    assert drop not in {tag for *_, tag, _ in _tiff_entries(bytes(out))}
    return bytes(out)


def _flips_exactly(source):
    """The flip of `source`, checked pixel by pixel against Pillow's transpose of its decoding."""
    result = imaging.flip(source)
    original, flipped = Image.open(io.BytesIO(source)), Image.open(io.BytesIO(result.data))
    for index in range(result.frames):
        original.seek(index)
        flipped.seek(index)
        assert flipped.mode == original.mode
        assert flipped.tobytes() == original.transpose(DOWN).tobytes()
    return result, decode(result.data)


def _tags(**named):
    exif = Image.Exif()
    for name, value in named.items():
        exif[getattr(ExifTags.Base, name)] = value
    return exif.tobytes()


@pytest.mark.parametrize("directory", [False, True])
def test_bigtiff_flips_and_keeps_its_tags(directory):
    # Pillow's bytes for a BigTIFF's own tags have a BigTIFF header its TIFF writer cannot read
    # back: struct.error, a 500, for every BigTIFF. (Pillow writes BigTIFF uncompressed only.)
    exif = Image.Exif()
    exif[ExifTags.Base.Software], exif[ExifTags.Base.Artist] = "flipfleet", "A"
    if directory:
        exif[ExifTags.IFD.Exif] = EXIF_DIRECTORY
    source = encode(picture("RGB"), "TIFF", big_tiff=True, exif=exif.tobytes(), dpi=(300, 300))
    assert source[2] == 0x2B  # a BigTIFF

    result, flipped = _flips_exactly(source)

    assert result.dropped == ()
    assert (flipped.getexif()[ExifTags.Base.Software], flipped.getexif()[ExifTags.Base.Artist]) == ("flipfleet", "A")
    assert flipped.info["dpi"] == (300, 300)
    if directory:
        assert flipped.getexif().get_ifd(ExifTags.IFD.Exif)[0x9003] == EXIF_DIRECTORY[0x9003]


def test_adobe_deflate_tiff_drops_only_its_exif_directory():
    # As Photoshop writes it: Pillow's libtiff writer (every compressed TIFF) cannot write an
    # EXIF directory ("Error setting from dictionary", a 500); the rest is kept.
    tags = {ExifTags.Base.Software: "Adobe Photoshop CS Windows", ExifTags.Base.Artist: "A",
            ExifTags.Base.InterColorProfile: SRGB, ExifTags.IFD.Exif: EXIF_DIRECTORY,
            ExifTags.Base.XResolution: 300.0, ExifTags.Base.YResolution: 300.0, ExifTags.Base.ResolutionUnit: 2}
    source = _handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), deflate=True, tags=tags)

    result, flipped = _flips_exactly(source)

    assert result.dropped == ("exif",)
    assert flipped.info["compression"] == "tiff_adobe_deflate"
    assert flipped.info["icc_profile"] == SRGB
    assert flipped.info["dpi"] == (300.0, 300.0)
    assert flipped.getexif()[ExifTags.Base.Software] == "Adobe Photoshop CS Windows"
    assert flipped.getexif()[ExifTags.Base.Artist] == "A"
    assert not flipped.getexif().get_ifd(ExifTags.IFD.Exif)


def test_uncompressed_tiff_keeps_its_exif_directory():
    # Pillow's own writer (no compression) writes the EXIF directory: nothing is dropped.
    tags = {ExifTags.Base.Software: "flipfleet", ExifTags.IFD.Exif: EXIF_DIRECTORY}
    source = _handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), tags=tags)

    result, flipped = _flips_exactly(source)

    assert result.dropped == ()
    kept = flipped.getexif().get_ifd(ExifTags.IFD.Exif)
    assert (kept[0x9003], kept[0xA002]) == (EXIF_DIRECTORY[0x9003], EXIF_DIRECTORY[0xA002])


@pytest.mark.parametrize(("deflate", "directory", "dropped"), [
    (False, False, ()), (True, False, ()), (True, True, ("exif",)),
])
def test_16_bit_rgba_tiff_flips_as_pillow_reads_it(deflate, directory, dropped):
    # 16 bits a sample, associated alpha ("RGBa;16"): Pillow reads it as 8-bit RGBA, which says
    # so. Its own BitsPerSample, ExtraSamples... are not written back over the RGBA that is written.
    dropped = (*dropped, imaging.HIGH_BIT_DEPTH)
    tags = {ExifTags.Base.Software: "Pixelmator 3.6", ExifTags.Base.InterColorProfile: SRGB}
    if directory:
        tags[ExifTags.IFD.Exif] = EXIF_DIRECTORY
    pixels = random.Random(5).randbytes(SIZE[0] * SIZE[1] * 8)
    source = _handmade_tiff(SIZE, (16, 16, 16, 16), 2, pixels, extra=(1,), deflate=deflate, tags=tags)
    assert decode(source).mode == "RGBA"

    result, flipped = _flips_exactly(source)

    assert result.dropped == dropped
    assert flipped.tag_v2[258] == (8, 8, 8, 8) and flipped.tag_v2[338] == (2,)  # the writer's own
    assert flipped.info["icc_profile"] == SRGB
    assert flipped.getexif()[ExifTags.Base.Software] == "Pixelmator 3.6"


def _tiff_pages(*pages):
    """One TIFF of the single-page TIFFs `pages`, in order (Pillow's own appender moves their offsets)."""
    from PIL import TiffImagePlugin

    out = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(out) as appender:
        for page in pages:
            appender.write(page)
            appender.newFrame()
    return out.getvalue()


def _tiff_16_bits(mode):
    bands = {"RGB": 3, "RGBA": 4}[mode]
    pixels = random.Random(6).randbytes(SIZE[0] * SIZE[1] * bands * 2)
    return _handmade_tiff(SIZE, (16,) * bands, 2, pixels, extra=(2,) if mode == "RGBA" else None)


# 16 bits a sample that Pillow decodes to an 8-bit mode, which its writers write: the flip names
# the depth lost. Its 16-bit grey (I;16) stays 16 bits, and 8 bits have nothing to lose.
@pytest.mark.parametrize(("source", "narrowed", "bits"), [
    (png_16_bits("RGB"), True, 8),
    (png_16_bits("RGBA"), True, 8),
    (png_16_bits("LA"), True, 8),
    (_tiff_16_bits("RGB"), True, 8),
    (_tiff_16_bits("RGBA"), True, 8),
    (_tiff_pages(encode(picture("RGB"), "TIFF"), _tiff_16_bits("RGB")), True, 8),
    (png_16_bits("L"), False, 16),
    (encode(picture("I;16"), "TIFF"), False, 16),
    (encode(picture("RGB"), "PNG"), False, 8),
    (encode(picture("RGB"), "TIFF"), False, 8),
], ids=["png-rgb-16", "png-rgba-16", "png-la-16", "tiff-rgb-16", "tiff-rgba-16", "tiff-second-page-rgb-16",
        "png-i16", "tiff-i16", "png-rgb-8", "tiff-rgb-8"])
def test_a_flip_that_writes_16_bits_a_sample_at_8_says_so(source, narrowed, bits):
    result, flipped = _flips_exactly(source)

    assert result.dropped == ((imaging.HIGH_BIT_DEPTH,) if narrowed else ())
    if result.format == "PNG":
        assert result.data[24] == bits  # the IHDR's bit depth
    else:
        flipped.seek(result.frames - 1)
        assert set(flipped.tag_v2[258]) == {bits}


@pytest.mark.parametrize("bits", [10, 12])
def test_a_heic_of_more_than_8_bits_a_sample_written_at_8_says_so(monkeypatch, bits):
    import pillow_heif

    monkeypatch.setattr(pillow_heif.options, "SAVE_HDR_TO_12_BIT", bits == 12)
    deep = pillow_heif.from_bytes(mode="RGB;16", size=SIZE, data=random.Random(7).randbytes(SIZE[0] * SIZE[1] * 6))
    out = io.BytesIO()
    deep.save(out, format="HEIF", quality=90)
    assert decode(out.getvalue()).info["bit_depth"] == bits
    result = imaging.flip(out.getvalue())
    assert (result.dropped, decode(result.data).info["bit_depth"]) == ((imaging.HIGH_BIT_DEPTH,), 8)
    assert imaging.flip(_phone_picture("HEIF", photo(SIZE))).dropped == ()


def test_a_16_bit_colour_key_is_written_for_the_8_bit_colours():
    # tRNS holds a 16-bit colour: kept as it is over 8-bit colours, 300 would be no colour at all.
    source = png_16_bits("RGB")
    header_end = 8 + 25  # the signature, then IHDR's length, type, 13 bytes and CRC
    key = struct.pack(">HHH", 300, 400, 50_000)
    result = imaging.flip(source[:header_end] + png_chunk(b"tRNS", key) + source[header_end:])
    assert decode(result.data).info["transparency"] == (1, 1, 195)
    assert result.dropped == (imaging.HIGH_BIT_DEPTH,)


@pytest.mark.parametrize("second", ["F", "I;16", "L"])
def test_tiff_pages_of_other_modes_without_rows_per_strip(second):
    # The first page's ColorMap was written back into every page: "Requiring 12884901888 items
    # for Colormap" (a ValueError, a 500) for a float page after a palette one.
    pages = [picture("P"), picture(second) if second != "F" else Image.new("F", SIZE, 0.5)]
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    exif=_tags(Software="flipfleet"), compression="tiff_adobe_deflate")
    source = _without_tiff_tag(source, 278)  # RowsPerStrip

    result, flipped = _flips_exactly(source)

    assert (result.frames, result.dropped) == (2, ())
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"


def test_tiff_pages_keep_their_own_compression():
    # The first page's compression was the default of every page: CCITT Group 4 for a
    # greyscale page ("Bits/sample must be 1"), the TIFF refused as damaged, a 400.
    bilevel, grey = picture("1"), picture("L")
    grey.encoderinfo = {"compression": "tiff_lzw"}  # what Pillow writes this page with
    source = encode(bilevel, "TIFF", save_all=True, append_images=[grey], compression="group4")

    result, flipped = _flips_exactly(source)

    assert result.dropped == ()
    assert flipped.info["compression"] == "group4"
    flipped.seek(1)
    assert flipped.info["compression"] == "tiff_lzw"


@pytest.mark.parametrize("deflate", [False, True])
def test_source_layout_tags_are_not_written_back(deflate):
    # Separate colour planes, decoded to interleaved RGB: the source's PlanarConfiguration (and
    # BitsPerSample, ColorMap, Photometric...) written over the writer's own described planes
    # that the RGB written is not: a 200 with a TIFF that does not decode.
    source = _handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), planes=True, deflate=deflate,
                            tags={ExifTags.Base.Software: "flipfleet"})
    assert Image.open(io.BytesIO(source)).tag_v2[284] == 2

    result, flipped = _flips_exactly(source)

    assert result.dropped == ()
    assert flipped.tag_v2[284] == 1
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"


def jpeg_with_unwritable_exif() -> bytes:
    """A JPEG whose XResolution is stored as text: Pillow reads it but cannot write it again
    (TypeError: bad operand type for abs())."""
    from PIL import TiffImagePlugin, TiffTags

    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    ifd[ExifTags.Base.Make] = "flipfleet camera"
    ifd[ExifTags.Base.XResolution] = "72"
    ifd.tagtype[ExifTags.Base.XResolution] = TiffTags.ASCII
    return encode(photo((64, 48)), "JPEG", exif=b"Exif\0\0II*\0\x08\0\0\0" + ifd.tobytes(8), icc_profile=SRGB)


def test_exif_that_cannot_be_written_again_is_dropped():
    # The picture is fine: flipped without its EXIF, not a 400.
    source = jpeg_with_unwritable_exif()

    result = imaging.flip(source, lossless=False)

    assert result.dropped == ("exif",)
    assert decode(result.data).info["icc_profile"] == SRGB
    assert psnr(decode(result.data), decode(source).transpose(DOWN)) > 40


def exif_with_a_number_for_text(orientation: int | None) -> bytes:
    """An EXIF directory whose Make (ASCII) is stored as a FLOAT: Pillow reads it, and its writers
    fail on it with an AttributeError."""
    entries = [struct.pack("<HHIf", ExifTags.Base.Make, 11, 1, 1.5)]
    if orientation:
        entries.insert(0, struct.pack("<HHIHH", ExifTags.Base.Orientation, 3, 1, orientation, 0))
    return b"II*\0\x08\0\0\0" + struct.pack("<H", len(entries)) + b"".join(entries) + b"\0\0\0\0"


@pytest.mark.parametrize("orientation", [None, 6])
@pytest.mark.parametrize(("fmt", "prefix"), [("PNG", b""), ("JPEG", b"Exif\0\0"), ("WEBP", b""), ("HEIF", b"")])
@pytest.mark.parametrize("lossless", [True, False])
def test_exif_with_a_number_for_text_is_dropped_not_a_500(fmt, prefix, orientation, lossless):
    source = encode(photo((64, 48)), fmt, exif=prefix + exif_with_a_number_for_text(orientation))

    result = imaging.flip(source, lossless=lossless)

    assert "exif" in result.dropped or result.path == "lossless"
    assert (result.width, result.height) == ((48, 64) if orientation else (64, 48))


def test_exif_that_cannot_be_written_again_is_kept_by_a_lossless_flip(turbojpeg):
    # Moved in the DCT domain, the same EXIF is kept as it is: no tag of it needs writing.
    source = jpeg_with_unwritable_exif()

    result = imaging.flip(source)

    assert result.dropped == ()
    assert decode(result.data).getexif()[ExifTags.Base.Make] == "flipfleet camera"


@pytest.mark.parametrize("exif_too", [True, False], ids=["exif-and-xmp", "xmp-only"])
def test_a_tiff_orientation_in_its_xmp_is_applied_once(exif_too):
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
           b'</x:xmpmeta>')
    tags = ImageFileDirectory_v2()
    tags[700], tags.tagtype[700] = xmp, 1
    if exif_too:
        tags[ExifTags.Base.Orientation] = 6
    data = encode(photo((40, 30)), "TIFF", tiffinfo=tags)
    sizes = []
    for _ in range(3):  # each flip of the last one's answer: turned once, then only flipped
        result = imaging.flip(data)
        data = result.data
        sizes.append((result.width, result.height))
    assert sizes == [(30, 40)] * 3
    kept = decode(data).tag_v2[700]
    assert b"rdf:Description" in kept and b"tiff:Orientation" not in kept


ORIENTED_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6" dc:title="x"/>'
                '</rdf:RDF></x:xmpmeta>')


def _png_with_chunks(*chunks: tuple[bytes, bytes], **text: tuple) -> bytes:
    """A 40x30 PNG with these raw ancillary chunks, and text chunks: keyword -> PngInfo method, arguments."""
    info = PngImagePlugin.PngInfo()
    for kind, body in chunks:
        info.add(kind, body)
    for keyword, (method, *arguments) in text.items():
        getattr(info, method)(keyword, *arguments)
    return encode(_cornered((40, 30)), "PNG", pnginfo=info)


def _chunks(data: bytes) -> dict[bytes, list[bytes]]:
    found, at = {}, 8
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        found.setdefault(kind, []).append(data[at + 8 : at + 8 + length])
        at += 12 + length
    return found


@pytest.mark.parametrize("kind", [b"gAMA", b"cHRM", b"sRGB", b"sBIT"])
def test_a_pngs_colour_space_chunks_are_kept_as_they_are(kind):
    # Without an ICC profile, gAMA and cHRM alone say what the colours mean: dropped, they shift.
    body = {b"gAMA": struct.pack(">I", 100_000), b"cHRM": struct.pack(">8I", *range(31_270, 39_270, 1_000)),
            b"sRGB": b"\x01", b"sBIT": b"\x05\x06\x05"}[kind]
    result = imaging.flip(_png_with_chunks((kind, body)))
    assert _chunks(result.data)[kind] == [body]


def test_a_pngs_text_is_kept_and_its_xmp_loses_only_its_orientation():
    source = _png_with_chunks(Title=("add_text", "flip"), Comment=("add_text", "long " * 100, True),
                              Author=("add_itxt", "Zoë", "fr", "Auteur"),
                              **{"XML:com.adobe.xmp": ("add_itxt", ORIENTED_XMP)})
    result = imaging.flip(source)
    flipped = decode(result.data)
    assert (result.width, result.height) == (30, 40)  # turned by the XMP's orientation, once
    assert {key: flipped.text[key] for key in ("Title", "Comment", "Author")} == {
        "Title": "flip", "Comment": "long " * 100, "Author": "Zoë"}
    assert flipped.text["XML:com.adobe.xmp"] == ORIENTED_XMP.replace('tiff:Orientation="6"', "")
    assert imaging.flip(result.data).height == 40  # and not turned again


def test_a_pngs_text_after_its_pixels_is_kept_but_not_colour_chunks_where_they_are_invalid():
    source = _png_with_chunks(Title=("add_text", "before"))
    end = source.rindex(b"IEND") - 4
    after = [png_chunk(b"tEXt", b"Comment\0after the pixels"), png_chunk(b"zTXt", b"Note\0\0" + zlib.compress(b"z")),
             png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + ORIENTED_XMP.encode()),
             png_chunk(b"gAMA", struct.pack(">I", 100_000))]
    source = source[:end] + b"".join(after) + source[end:]
    result = imaging.flip(source)
    flipped = decode(result.data)
    flipped.load()  # Pillow reads text after the pixels as it reaches it
    assert (result.width, result.height) == (30, 40)  # turned by the XMP's orientation
    assert {key: flipped.text[key] for key in ("Title", "Comment", "Note")} == {
        "Title": "before", "Comment": "after the pixels", "Note": "z"}
    assert flipped.text["XML:com.adobe.xmp"] == ORIENTED_XMP.replace('tiff:Orientation="6"', "")
    assert b"gAMA" not in _chunks(result.data)
    order = [kind for kind in _chunk_kinds(result.data) if kind in (b"IDAT", b"tEXt", b"zTXt", b"iTXt")]
    assert order == [b"tEXt", b"IDAT", b"tEXt", b"zTXt", b"iTXt"]  # each where it was


def test_a_png_of_text_after_its_pixels_flips_again():
    # Written before the pixels, 25,000 of them would be more than a PNG may have there.
    source = encode(picture("RGB"), "PNG")
    end = source.rindex(b"IEND") - 4
    source = source[:end] + png_chunk(b"tEXt", b"Comment\0after") * 25_000 + source[end:]
    twice = imaging.flip(imaging.flip(source).data)
    assert _chunk_kinds(twice.data).count(b"tEXt") == 25_000


def _chunk_kinds(data: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at + 8 <= len(data):
        kinds.append(data[at + 4 : at + 8])
        at += 12 + int.from_bytes(data[at : at + 4], "big")
    return kinds


@pytest.mark.parametrize(("kind", "after_pixels"), [(b"tEXt", False), (b"zTXt", False), (b"tEXt", True),
                                                    (b"zTXt", True), (b"iTXt", True)])
def test_a_pngs_exif_in_imagemagicks_text_is_counted_too(kind, after_pixels):
    # Pillow's getexif() reads the hex text when there is no eXIf chunk.
    exif = exif_of_entries(tiff.MOST_ENTRIES + 1).removeprefix(b"Exif\0\0")
    text = f"\nexif\n{len(exif):8d}\n{exif.hex()}\n".encode()
    body = {b"tEXt": text, b"zTXt": b"\0" + zlib.compress(text), b"iTXt": b"\0\0\0\0" + text}[kind]
    source = encode(picture("RGB"), "PNG")
    at = source.rindex(b"IEND") - 4 if after_pixels else 33  # before the end, or after the header
    source = source[:at] + png_chunk(kind, b"Raw profile type exif\0" + body) + source[at:]
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(source)


def test_a_later_tiff_pages_exif_directory_is_not_read():
    # Nothing counts a later page's EXIF directory (tiff.counts), so nothing may read it: later
    # pages pointing at one directory of 30,000 tags took the whole deadline.
    source = tiff_with_later_pages_exif(pages=5, entries=30_000)
    result = imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_seconds=2))
    assert (result.frames, result.dropped) == (5, ("exif",))


def test_a_later_tiff_page_in_a_resolution_of_no_unit_gets_none_not_an_earlier_pages():
    # Pillow leaves the first page's dpi in info when it reads a page of a unitless resolution.
    first, second = _cornered((40, 30)), _cornered((40, 30))
    second.encoderinfo = {"dpi": None, "resolution_unit": 1, "x_resolution": 72, "y_resolution": 72}
    source = encode(first, "TIFF", save_all=True, append_images=[second], dpi=(300, 300))
    pages = Image.open(io.BytesIO(source))
    pages.seek(1)
    assert (pages.tag_v2[imaging.TIFF_RESOLUTION_UNIT], pages.info["dpi"]) == (1, (300, 300))  # stale
    result = imaging.flip(source)
    assert [page[2] for page in _tiff_page_metadata(result.data)] == [(300.0, 300.0), None]


@pytest.mark.parametrize("later_only", ["icc_profile", "exif"])
def test_a_later_heic_images_own_metadata_is_kept(later_only):
    # pillow-heif writes a later image's ICC profile and EXIF from that image's own info.
    first, second = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    second.info[later_only] = SRGB if later_only == "icc_profile" else _tags(Software="second")
    source = encode(first, "HEIF", save_all=True, append_images=[second], quality=90)

    result = imaging.flip(source)

    flipped = Image.open(io.BytesIO(result.data))
    flipped.seek(1)
    kept = flipped.info.get("icc_profile") if later_only == "icc_profile" else flipped.getexif().get(
        ExifTags.Base.Software)
    assert kept == (SRGB if later_only == "icc_profile" else "second")
    assert result.dropped == ()


@pytest.mark.parametrize(("kind", "body"), [
    (b"sBIT", b"\x0c\x0c\x0c"),  # 12 significant bits of the 16: more than the 8 written
    (b"tIME", struct.pack(">HBBBBB", 2024, 1, 2, 3, 4, 5)),  # the flip is a change
    (b"tEXt", b"Raw profile type exif\0exif\n  10\n457869660000"),  # the EXIF, written on its own
], ids=["16-bit sBIT", "tIME", "ImageMagick EXIF"])
def test_png_chunks_that_would_be_wrong_are_not_kept(kind, body):
    source = png_16_bits("RGB") if kind == b"sBIT" else _png_with_chunks()
    source = source[:33] + png_chunk(kind, body) + source[33:]  # after the IHDR
    assert kind not in _chunks(imaging.flip(source).data)


def _cornered(size: tuple[int, int]) -> Image.Image:
    """Black but for one red pixel in the top left corner: where it ends up shows the transpose."""
    im = Image.new("RGB", size)
    im.putpixel((0, 0), (255, 0, 0))
    return im


def _tiff_pages(orientations: list[int], compression: str) -> bytes:
    """A TIFF of 40x30 pages, each with its own Orientation tag in its own directory."""
    pages = [_cornered((40, 30)) for _ in orientations]
    for page, orientation in zip(pages[1:], orientations[1:], strict=True):
        page.encoderinfo = {"exif": _tags(Orientation=orientation)}  # over the first page's
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression=compression,
                  exif=_tags(Orientation=orientations[0]))


# Each page's orientation, applied to that page alone, decoded by Pillow (raw) and by libtiff.
@pytest.mark.parametrize(("orientations", "compression"), [
    ([6, 1], "raw"), ([3, 8], "raw"), ([1, 6], "raw"), ([5, 7, 2], "raw"),
    ([9, 6], "raw"),  # 9 is no orientation, and is ignored (libtiff's writer refuses it)
    ([6, 1], "tiff_lzw"), ([3, 8], "tiff_lzw"),
], ids=str)
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_each_tiff_page_is_turned_by_its_own_orientation(orientations, compression, direction):
    source = _tiff_pages(orientations, compression)
    pages = Image.open(io.BytesIO(source))
    stored = []
    for index in range(pages.n_frames):
        pages.seek(index)
        stored.append(pages.tag_v2[ExifTags.Base.Orientation])
    assert stored == orientations  # each page's own directory has its own tag

    result = imaging.flip(source, direction)

    flipped = Image.open(io.BytesIO(result.data))
    assert result.frames == flipped.n_frames == len(orientations)
    for index in range(len(orientations)):
        pages.seek(index)
        flipped.seek(index)
        expected = ImageOps.exif_transpose(pages).transpose(imaging.DIRECTIONS[direction])
        assert (flipped.size, flipped.getbbox()) == (expected.size, expected.getbbox()), f"page {index + 1}"
        assert ExifTags.Base.Orientation not in flipped.tag_v2
    pages.seek(0)
    assert (result.width, result.height) == ImageOps.exif_transpose(pages).size


def _tiff_page_metadata(data: bytes) -> list[tuple]:
    """Each page's Software, ImageDescription, dpi, ICC profile and EXIF directory, from its own
    directory (Pillow reports 1x1 dpi for a page without a resolution, and keeps an earlier
    page's profile in info)."""
    pages, found = Image.open(io.BytesIO(data)), []
    for index in range(pages.n_frames):
        pages.seek(index)
        exif = pages.getexif()
        dpi = pages.info["dpi"] if imaging.TIFF_X_RESOLUTION in pages.tag_v2 else None
        found.append((exif.get(ExifTags.Base.Software), exif.get(ExifTags.Base.ImageDescription), dpi,
                      pages.tag_v2.get(imaging.TIFF_ICC_PROFILE), dict(exif.get_ifd(ExifTags.IFD.Exif))))
    return found


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw"])
def test_each_tiff_page_keeps_its_own_tags_resolution_and_profile(compression):
    # The writer gives a later page the first page's metadata unless it is told that page's own.
    first, second, third = _cornered((40, 30)), _cornered((40, 30)), _cornered((20, 10))
    second.encoderinfo = {"exif": _tags(Software="second", ImageDescription="page two"), "dpi": (300, 300),
                          "icc_profile": SRGB}
    third.encoderinfo = {"exif": b"", "dpi": None}
    source = encode(first, "TIFF", save_all=True, append_images=[second, third], exif=_tags(Software="first"),
                    dpi=(72, 72), compression=compression)
    expected = [("first", None, (72.0, 72.0), None, {}), ("second", "page two", (300.0, 300.0), SRGB, {}),
                (None, None, None, None, {})]
    assert _tiff_page_metadata(source) == expected  # as the source has them

    result = imaging.flip(source)

    assert _tiff_page_metadata(result.data) == expected
    assert result.dropped == ()


def test_a_later_tiff_pages_exif_directory_is_named_dropped_and_the_first_pages_kept():
    # Pillow's writer moves a later page's pixel offsets, not its pointer to an EXIF directory.
    # (Two pages of one layout: the second's pointer, left as it was, happens to be right.)
    exif = Image.Exif()
    exif[ExifTags.Base.Software] = "both"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:01:02 03:04:05"
    source = encode(_cornered((40, 30)), "TIFF", save_all=True, append_images=[_cornered((40, 30))],
                    exif=exif.tobytes())
    directory = {ExifTags.Base.DateTimeOriginal: "2024:01:02 03:04:05"}
    assert [page[-1] for page in _tiff_page_metadata(source)] == [directory, directory]

    result = imaging.flip(source)

    assert _tiff_page_metadata(result.data) == [("both", None, None, None, directory), ("both", None, None, None, {})]
    assert result.dropped == ("exif",)


def _with_pixel_dimensions(fmt: str, orientation: int) -> bytes:
    """A 128x64 picture whose EXIF has an orientation and PixelXDimension and PixelYDimension."""
    exif = Image.Exif()
    exif[imaging.ORIENTATION] = orientation
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.ExifImageWidth: 128, ExifTags.Base.ExifImageHeight: 64})
    return encode(photo((128, 64)), fmt, exif=exif.tobytes())


def _exif_pixel_dimensions(data: bytes) -> tuple[int, int]:
    directory = decode(data).getexif().get_ifd(ExifTags.IFD.Exif)
    return directory[ExifTags.Base.ExifImageWidth], directory[ExifTags.Base.ExifImageHeight]


@pytest.mark.parametrize(("lossless", "path"), [(True, "lossless"), (False, "re-encoded")])
@pytest.mark.parametrize(("orientation", "size"), [(6, (64, 128)), (3, (128, 64))], ids=["turned", "upside-down"])
def test_the_jpeg_exif_width_and_height_are_the_flipped_pictures(turbojpeg, lossless, path, orientation, size):
    result = imaging.flip(_with_pixel_dimensions("JPEG", orientation), lossless=lossless)
    assert result.path == path
    assert _exif_pixel_dimensions(result.data) == decode(result.data).size == size


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize(("orientation", "size"), [(6, (64, 128)), (3, (128, 64))], ids=["turned", "upside-down"])
def test_the_exif_width_and_height_written_back_are_the_flipped_pictures(fmt, orientation, size):
    result = imaging.flip(_with_pixel_dimensions(fmt, orientation))
    assert _exif_pixel_dimensions(result.data) == decode(result.data).size == size


def test_a_tiff_without_a_resolution_gets_none():
    # Pillow reads it as 1x1 dpi; written back, that would tell every viewer so.
    flipped = decode(imaging.flip(encode(photo((30, 20)), "TIFF")).data)
    assert 282 not in flipped.tag_v2 and 296 not in flipped.tag_v2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_ordinary_metadata_is_all_kept(fmt):
    # Dropping is for metadata the writer refuses; a bug that made ordinary metadata fail would
    # hide behind it, so: nothing is dropped from ordinary pictures.
    source = encode(photo((64, 48)), fmt, exif=_tags(Make="flipfleet camera", Software="flipfleet"),
                    icc_profile=SRGB, dpi=(300, 300))
    result = imaging.flip(source)
    assert result.dropped == ()
    assert decode(result.data).getexif()[ExifTags.Base.Make] == "flipfleet camera"


def _png_writer_refusing(monkeypatch, refused):
    """Pillow's PNG writer, refusing (with struct.error, as the TIFF writer does) any picture
    whose parameters carry one of `refused`."""
    from PIL import PngImagePlugin

    def save(im, fp, filename):
        if any(im.encoderinfo.get(key) is not None for key in refused):
            raise struct.error("required argument is not an integer")
        return PngImagePlugin._save(im, fp, filename)

    monkeypatch.setitem(Image.SAVE, "PNG", save)


def _png_with_metadata():
    return encode(picture("P"), "PNG", exif=_tags(Software="flipfleet"), icc_profile=SRGB, dpi=(300, 300),
                  transparency=3)


def test_only_the_metadata_the_writer_refuses_is_dropped(monkeypatch):
    source = _png_with_metadata()
    _png_writer_refusing(monkeypatch, {"icc_profile"})
    result, flipped = _flips_exactly(source)
    assert result.dropped == ("icc_profile",)
    assert "icc_profile" not in flipped.info  # not even from the frame's own info, where PNG looks
    assert flipped.getexif()[ExifTags.Base.Software] == "flipfleet"
    assert flipped.info["transparency"] == 3 and flipped.info["dpi"] == pytest.approx((300, 300), abs=0.1)


def test_two_refused_items_are_dropped_in_the_documented_order(monkeypatch):
    source = _png_with_metadata()
    _png_writer_refusing(monkeypatch, {"exif", "dpi"})
    result, flipped = _flips_exactly(source)
    assert result.dropped == ("exif", "dpi")
    assert list(imaging.SOURCE_METADATA)[:3] == ["exif", "tiff_tags", "dpi"]
    assert flipped.info["icc_profile"] == SRGB and flipped.info["transparency"] == 3


def test_a_writer_failure_without_any_metadata_is_still_a_bug(monkeypatch):
    # Our parameters made wrong, on a picture with metadata: dropping it all does not help, so
    # the encoder's ValueError or TypeError goes on to the 500, as before.
    monkeypatch.setitem(imaging._FORMAT_PARAMS, "JPEG", lambda im, data: {"qtables": "not tables"})
    source = encode(photo((64, 48)), "JPEG", exif=_tags(Software="flipfleet"), icc_profile=SRGB, dpi=(72, 72))
    with pytest.raises((ValueError, TypeError)):
        imaging.flip(source, lossless=False)


def test_an_encoder_failure_without_any_metadata_is_still_damaged_data(monkeypatch):
    source = _png_with_metadata()
    tries = []

    def failing(im, fp, filename):
        tries.append(sorted(key for key in im.encoderinfo if key in imaging.SOURCE_METADATA.values()))
        raise OSError("encoder error -2 when writing image file")

    monkeypatch.setitem(Image.SAVE, "PNG", failing)
    with pytest.raises(imaging.NotAnImage, match="cannot be written back"):
        imaging.flip(source)
    assert tries[0] == ["dpi", "exif", "icc_profile", "transparency"] and tries[-1] == []


def test_damaged_tiff_with_unwritable_tags_is_not_an_image():
    # As Tests/images/tiff_tiled_jpeg_oob_read.tif: a PlanarConfiguration stored as a BYTE (which
    # did not pack again: struct.error, a 500) and strips beyond the end of the file.
    source = bytearray(_handmade_tiff(SIZE, (8, 8, 8), 2, picture("RGB").tobytes(), deflate=True,
                                      tags={ExifTags.Base.Software: "flipfleet"}))
    for _, at, tag, _ in list(_tiff_entries(bytes(source))):
        if tag == 284:  # PlanarConfiguration
            source[at + 2 : at + 4] = struct.pack("<H", 1)  # BYTE
        if tag == 273:  # StripOffsets
            source[at + 8 : at + 12] = struct.pack("<I", len(source) + 1000)
    with pytest.raises(imaging.NotAnImage, match="damaged"):
        imaging.flip(bytes(source))


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


# -- work and memory bounds -------------------------------------------------------------------

def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding():
    poison = many_scans_jpeg((8000, 6000), scans=20_000)  # minutes of decoding, 1.9 MB
    started = time.perf_counter()
    with pytest.raises(imaging.TooCostly, match="more than 100 scans"):
        imaging.flip(poison, limits=replace(imaging.NO_LIMITS, max_scans=100))
    print(f"a {len(poison):,}-byte JPEG of 20,001 scans refused in {(time.perf_counter() - started) * 1000:.1f} ms")
    within = many_scans_jpeg((64, 48), scans=99)  # 100 scans in all: the limit itself
    assert imaging.flip(within, limits=replace(imaging.NO_LIMITS, max_scans=100)).format == "JPEG"


def test_a_tiff_of_more_strips_than_the_bound_is_refused_before_pillow_reads_them():
    with pytest.raises(imaging.TooCostly, match="a tag of 200,001 numbers"):
        imaging.flip(strips_tiff(200_001))
    assert imaging.flip(strips_tiff(200_000)).height == 200_000


@pytest.mark.parametrize("pages", [1, 100])
def test_a_tiff_of_more_tags_than_the_bound_is_refused_before_pillow_reads_them(pages):
    # Each entry costs Pillow a Python loop turn or more: 20,000 on one page (240 KB) took 1.2 s.
    with pytest.raises(imaging.TooCostly, match="more than 5,000 tags in all"):
        imaging.flip(tiff_of_entries(pages, tiff.MOST_ENTRIES + 1))
    flipped = imaging.flip(tiff_of_entries(pages, tiff.MOST_ENTRIES))
    assert (flipped.frames, flipped.height) == (pages, 4)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_an_exif_of_more_tags_than_the_bound_is_refused_before_pillow_reads_it(fmt):
    # Each costs Pillow a Python loop turn or more, read and written back: an EXIF has tens.
    most = tiff.MOST_ENTRIES
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(encode(picture("RGB"), fmt, exif=exif_of_entries(most + 1 - 100, in_exif_directory=100)))
    flipped = imaging.flip(encode(picture("RGB"), fmt, exif=exif_of_entries(most - 100, in_exif_directory=100)))
    assert len(decode(flipped.data).getexif()) == most - 100


def test_the_exif_of_a_png_after_its_pixels_is_counted_too():
    source = encode(picture("RGB"), "PNG")
    end = source.rindex(b"IEND") - 4
    exif = exif_of_entries(tiff.MOST_ENTRIES + 1).removeprefix(b"Exif\0\0")
    with pytest.raises(imaging.TooCostly, match="EXIF has more than 5,000 tags in all"):
        imaging.flip(source[:end] + png_chunk(b"eXIf", exif) + source[end:])


def test_a_tiffs_exif_directory_counts_with_its_pages():
    with pytest.raises(imaging.TooCostly, match="pages have more than 5,000 tags in all"):
        imaging.flip(encode(picture("RGB"), "TIFF", exif=exif_of_entries(3, in_exif_directory=tiff.MOST_ENTRIES)))
    assert imaging.flip(encode(picture("RGB"), "TIFF", exif=exif_of_entries(3, in_exif_directory=100))).height


def test_a_heic_metadata_item_of_a_type_libheif_cannot_write_is_left_out_not_a_500():
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "camera"
    source = encode(picture("RGB"), "HEIF", exif=exif.tobytes())
    item = source.index(b"Exif", source.index(b"infe"))
    source = source[:item] + "Exiæ".encode("latin-1") + source[item + 4 :]  # a type of five bytes in UTF-8
    assert [item["type"] for item in decode(source).info["metadata"]] == ["Exiæ"]
    flipped = imaging.flip(source)
    assert decode(flipped.data).size == picture("RGB").size


@pytest.mark.parametrize(("fmt", "lossless"), [("PNG", True), ("WEBP", True), ("JPEG", False), ("HEIF", True)])
def test_an_exif_tag_pillow_lists_but_keeps_no_value_of_is_dropped_not_a_500(fmt, lossless):
    # Pillow keeps no value for a PhotometricInterpretation of two, and raises KeyError on it.
    exif = b"Exif\0\0II*\0\x08\0\0\0" + struct.pack("<HHHIHH", 1, 262, 3, 2, 2, 2) + bytes(4)
    result = imaging.flip(encode(picture("RGB"), fmt, exif=exif), lossless=lossless)
    assert result.dropped == ("exif",)


@pytest.mark.parametrize(("size", "tile", "refused"), [
    ((16, 16), (4_096, 4_096), True),
    ((16, 16), (1_024, 1_040), True),
    ((16, 16), (1_024, 1_024), False),  # small enough whatever the picture
    ((1_100, 1_000), (1_104, 1_008), False),  # the picture's sides rounded up to 16
    ((1_100, 1_000), (1_120, 1_008), True),
], ids=str)
def test_a_tiff_tile_larger_than_its_picture_is_refused_before_it_is_decoded(size, tile, refused):
    source = tiff_in_one_tile(size, tile)
    if refused:
        with pytest.raises(imaging.TooCostly, match="tiles are larger than its"):
            imaging.flip(source)
    else:
        assert decode(imaging.flip(source).data).size == size


def test_a_run_length_bmp_counts_its_pixels_for_the_time_pillow_takes_on_them():
    # Pillow decodes RLE in Python: a 124-byte BMP of 49 million pixels took 7 s.
    with pytest.raises(imaging.TooLarge, match="limit is 6,250,000 for run-length BMP pictures"):
        imaging.flip(bmp_rle8((2_600, 2_500), run=255), limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    source = bmp_rle8((400, 300), run=16)
    flipped = imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    assert decode(flipped.data).tobytes() == decode(source).transpose(DOWN).tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_tags_of_more_numbers_in_all_than_the_bound_are_refused_before_pillow_reads_them(fmt):
    # Fractions cost Pillow about 12 us each: 800,000 of them in one EXIF (6.4 MB) took 40 s.
    def with_fractions(count: int) -> bytes:
        exif = bytearray(exif_of_entries(5, in_exif_directory=5))
        for index in (0, 1, 2):  # three tags of IFD0 and two of the EXIF directory, at one place
            struct.pack_into("<HII", exif, 6 + 8 + 2 + 12 * index + 2, 5, count, 8)
        for index in (0, 1):
            struct.pack_into("<HII", exif, 6 + 8 + 2 + 12 * 5 + 4 + 2 + 12 * index + 2, 5, count, 8)
        return encode(picture("RGB"), fmt, exif=bytes(exif + bytes(8 * count)))

    most = tiff.MOST_NUMBERS // 10 // 5  # each of the five tags' fractions
    with pytest.raises(imaging.TooCostly, match="more than 500,000 numbers in all"):
        imaging.flip(with_fractions(most + 1))
    assert imaging.flip(with_fractions(most - 10)).format == fmt


@pytest.mark.parametrize("page", [0, 1])
def test_an_lzma_tiff_page_counts_its_pixels_for_the_time_its_encoder_takes(page):
    # libtiff's xz encoder took 5.5 s on 50 MP, in one call the deadline cannot stop.
    pages = [Image.new("L", (16, 16)), Image.new("L", (16, 16))]
    pages[page] = Image.new("L", (2_600, 2_500))
    pages[page].encoderinfo = {"compression": "lzma"}
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    compression="lzma" if page == 0 else "tiff_deflate")
    with pytest.raises(imaging.TooLarge, match="limit is 6,250,000 for LZMA-compressed TIFF pictures"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000))
    pages[page] = Image.new("L", (1_000, 1_000))
    pages[page].encoderinfo = {"compression": "lzma"}
    source = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:],
                    compression="lzma" if page == 0 else "tiff_deflate")
    assert imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=50_000_000)).frames == 2


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


def test_a_large_body_in_another_format_is_named_from_its_header_alone():
    # EPS's plugin reads a whole body line by line when given it: about 20 s for these 25 MB.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n%%EndComments\n" + b"a\n" * 12_500_000
    started = time.perf_counter()
    with pytest.raises(imaging.UnsupportedFormat, match="EPS pictures are not supported"):
        imaging.flip(eps)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("path", [True, False], ids=["lossless", "re-encoded"])
def test_stray_bytes_between_segments_do_not_hide_scans_from_the_limit(path):
    # libjpeg skips them with a warning and decodes every scan after them.
    poison = many_scans_jpeg((4000, 3000), scans=1000)
    second_scan = poison.index(b"\xff\xda", poison.index(b"\xff\xda") + 2)
    poison = poison[:second_scan] + b"\xff\xfe\x00\x04ab\x00\x00" + poison[second_scan:]
    with pytest.raises(imaging.TooCostly, match="more than 100 scans"):
        imaging.flip(poison, lossless=path, limits=replace(imaging.NO_LIMITS, max_scans=100))


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


# -- lossless JPEG flips ----------------------------------------------------------------------

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
    source = _jpeg("baseline 4:2:0", exif=_tags(Orientation=3, Make="flipfleet camera"), icc_profile=SRGB,
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


# -- HEIC and AVIF: what phones send --------------------------------------------------------

PHONE_FORMATS = ["HEIF", "AVIF"]


def _phone_picture(fmt: str, im: Image.Image, orientation: int = 1, chroma: str = "4:2:0", **params) -> bytes:
    """`im` as pillow-heif (HEIC) or Pillow (AVIF) writes it, at quality 90; an EXIF orientation
    is written as the container's rotation and mirroring (irot, imir), as phones do."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "flipfleet phone"
    if orientation != 1:
        exif[imaging.ORIENTATION] = orientation
    sampling = {"chroma": int(chroma.replace(":", ""))} if fmt == "HEIF" else {"subsampling": chroma}
    return encode(im, fmt, quality=90, exif=exif.tobytes(), **sampling, **params)


def _shown(im: Image.Image, orientation: int) -> Image.Image:
    """What a viewer shows of `im` written with `orientation`."""
    operation = imaging.ORIENTATION_TRANSPOSE.get(orientation)
    return im if operation is None else im.transpose(operation)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
@pytest.mark.parametrize("size", [(320, 240), (333, 251), (17, 33), (1, 1)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
@pytest.mark.parametrize("direction", ["vertical", "horizontal"])
def test_heic_and_avif_flip_what_a_viewer_shows(fmt, size, mode, orientation, direction):
    original = photo(size, mode)
    if mode == "RGBA":  # an alpha that varies, or the encoder writes none
        original.putalpha(photo(size, "L").transpose(ACROSS))
    source = _phone_picture(fmt, original, orientation, chroma="4:4:4")

    result = imaging.flip(source, direction)

    flipped = decode(result.data)
    expected = _shown(original, orientation).transpose(imaging.DIRECTIONS[direction])
    assert (result.format, flipped.format, result.media_type) == (fmt, fmt, imaging.MEDIA_TYPES[fmt])
    assert (result.path, result.reason) == ("re-encoded", "")
    assert flipped.size == expected.size == (result.width, result.height)
    assert flipped.mode == mode
    # Read back by the same plugin, no orientation is left for it to apply a second time.
    assert flipped.getexif().get(imaging.ORIENTATION, 1) == 1
    assert flipped.getexif()[ExifTags.Base.Make] == "flipfleet phone"
    assert psnr(flipped, expected) > (38 if min(size) > 1 else 30)
    if mode == "RGBA":
        assert psnr(flipped.getchannel("A"), expected.getchannel("A")) > 35


# A quality-90 photo flipped twice, against the source: measured 53.9 dB (HEIC) and 38.8 dB
# (AVIF, whose colour conversion costs more than its quality) for a grainy photo, 54.7 and 42.3
# dB for a smooth one. The fast encoder settings (imaging.HEIF_PRESET, AVIF_SPEED) keep a grainy
# photo's size (1.00 and 0.97 times the source's, written at the libraries' slower defaults) and
# make a smooth one larger (1.43 and 2.02 times).
@pytest.mark.parametrize(
    ("fmt", "content", "twice_above", "larger"),
    [("HEIF", "grainy", 50, 1.1), ("AVIF", "grainy", 37, 1.1), ("HEIF", "smooth", 50, 1.5),
     ("AVIF", "smooth", 40, 2.2)],
)
def test_heic_and_avif_stay_close_after_two_flips(fmt, content, twice_above, larger):
    picture = photo((640, 480)) if content == "smooth" else decode(make_sample(640, 480)).convert("RGB")
    source = _phone_picture(fmt, picture)
    once = imaging.flip(source)
    twice = imaging.flip(once.data)
    print(f"{fmt}: two flips {psnr(decode(twice.data), decode(source)):.1f} dB, "
          f"{len(once.data) / len(source):.2f} times the source's size")
    assert psnr(decode(twice.data), decode(source)) > twice_above
    assert len(once.data) < larger * len(source)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
@pytest.mark.parametrize(("mode", "chroma"), [("RGB", "4:2:0"), ("RGB", "4:2:2"), ("RGB", "4:4:4"), ("RGBA", "4:4:4"),
                                              ("L", "4:0:0")])
def test_heic_and_avif_keep_their_chroma_subsampling(fmt, mode, chroma):
    source = photo((64, 48), mode)
    if mode == "RGBA":  # an alpha that varies, or the encoder writes none
        source.putalpha(photo((64, 48), "L").transpose(ACROSS))
    if mode == "L":  # both writers make grey pictures monochrome by themselves
        source = encode(source, fmt, quality=90)
    else:
        source = _phone_picture(fmt, source, chroma=chroma)
    flipped = decode(imaging.flip(source).data)
    assert flipped.mode == mode
    if fmt == "HEIF":
        assert flipped.info.get("chroma") == (int(chroma.replace(":", "")) if mode != "L" else None)
    else:
        assert imaging._av1_subsampling(imaging.flip(source).data) == (chroma if mode != "L" else None)


@pytest.mark.parametrize(("boxes_before", "found"), [(imaging.AV1C_MOST - 1, "4:4:4"), (imaging.AV1C_MOST, None)])
def test_an_avifs_subsampling_is_looked_for_in_its_first_configuration_boxes_only(boxes_before, found):
    # 24 MB of configuration boxes took 2 s to look through; a picture has one an image.
    monochrome, full = b"av1C\x81\x00\x10\x00", b"av1C\x81\x00\x00\x00"
    assert imaging._av1_subsampling(monochrome * boxes_before + full) == found


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_keep_their_metadata(fmt):
    xmp = (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
           b"<rdf:Description xmlns:dc='http://purl.org/dc/elements/1.1/' dc:format='flipfleet'/>"
           b"</rdf:RDF></x:xmpmeta>")
    source = _phone_picture(fmt, photo((64, 48)), orientation=6, icc_profile=SRGB, xmp=xmp)
    result = imaging.flip(source)
    flipped = decode(result.data)
    assert result.dropped == ()
    assert flipped.info["icc_profile"] == SRGB
    assert b"dc:format='flipfleet'" in flipped.info["xmp"]
    assert flipped.getexif()[ExifTags.Base.Make] == "flipfleet phone"


def _exif_orientation_patched(data: bytes, orientation: int) -> bytes:
    """`data`, whose EXIF has a YCbCrPositioning of 1, with that entry made an orientation tag:
    an EXIF that says `orientation` in a container that says nothing (the writers turn an
    orientation they are given into the container's own)."""
    entry = data.index(struct.pack(">HHIH", ExifTags.Base.YCbCrPositioning, 3, 1, 1))  # Pillow writes "MM"
    return data[:entry] + struct.pack(">HHIH", imaging.ORIENTATION, 3, 1, orientation) + data[entry + 10 :]


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_take_the_orientation_from_the_container_only(fmt):
    # HEIF (and so AVIF) viewers turn the picture by its irot and imir boxes, never by the EXIF.
    original = photo((64, 48))
    exif = Image.Exif()
    exif[ExifTags.Base.YCbCrPositioning] = 1
    source = _exif_orientation_patched(encode(original, fmt, quality=90, exif=exif.tobytes()), 6)
    flipped = decode(imaging.flip(source).data)
    assert flipped.size == (64, 48)
    assert psnr(flipped, original.transpose(DOWN)) > 38


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_frames_are_all_flipped(fmt):
    frames = [photo((64, 48)), photo((64, 48)).transpose(Image.Transpose.ROTATE_180), photo((64, 48)).transpose(ACROSS)]
    timing = {"duration": [100, 200, 300]} if fmt == "AVIF" else {}  # HEIC's images have no timing
    source = encode(frames[0], fmt, quality=90, save_all=True, append_images=frames[1:], **timing)

    result = imaging.flip(source)

    assert result.frames == 3
    flipped = Image.open(io.BytesIO(result.data))
    for index, frame in enumerate(frames):
        flipped.seek(index)
        flipped.load()
        assert psnr(flipped, frame.transpose(DOWN)) > 38
        if timing:
            assert flipped.info["duration"] == timing["duration"][index]


# Each pixel counts for this many against the pixel limits (imaging.PEAK_BYTES_PER_PIXEL / 8).
WEIGHTS = {"HEIF": 1.25, "AVIF": 4}


def counted(size: tuple[int, int], weight: float) -> int:
    """What a picture of `size` counts for against the pixel limits: its pixels, weighted, and its rows."""
    width, height = size
    return int(width * height * weight + height * imaging.ROW_BYTES / imaging.LIMITS_BYTES_PER_PIXEL)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (lambda weight: replace(imaging.NO_LIMITS, max_pixels=int(64 * 48 * weight) - 1), "pixels"),
        (lambda weight: replace(imaging.NO_LIMITS, max_frames=2), "more than 2 frames"),
        (lambda weight: replace(imaging.NO_LIMITS, max_total_pixels=2 * counted((64, 48), weight)), "add up"),
    ],
    ids=["pixels", "frames", "total pixels"],
)
def test_heic_and_avif_limits_are_checked_before_decoding(monkeypatch, fmt, limits, message):
    limits = limits(WEIGHTS[fmt])
    frames = [photo((64, 48))] * 3
    source = encode(frames[0], fmt, quality=90, save_all=True, append_images=frames[1:])
    decoded = []
    plugin = type(Image.open(io.BytesIO(source)))
    load = plugin.load
    monkeypatch.setattr(plugin, "load", lambda self: decoded.append(self.tell()) or load(self))
    with pytest.raises(imaging.TooLarge, match=message):
        imaging.flip(source, limits=limits)
    assert set(decoded) == {"pixels": set(), "more than 2 frames": {0, 1}, "add up": {0, 1}}[message]


@pytest.mark.parametrize(("lossless", "weight"), [(False, 24 / 8), (True, 46 / 8)], ids=["lossy", "lossless"])
def test_webp_pixels_count_for_the_memory_their_flips_take(lossless, weight):
    source = encode(photo((64, 48)), "WEBP", lossless=lossless)
    within = replace(imaging.NO_LIMITS, max_pixels=counted((64, 48), weight))
    assert imaging.flip(source, limits=within).format == "WEBP"
    with pytest.raises(imaging.TooLarge, match="times the memory a pixel"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=int(64 * 48 * weight) - 1))


def test_rows_count_for_the_memory_pillow_keeps_for_them():
    # One column of 100,000 rows: 100,000 pixels, and 16 bytes a row in Pillow's two copies.
    tall = encode(Image.new("L", (1, 100_000), 7), "PNG")
    assert imaging.flip(tall, limits=replace(imaging.NO_LIMITS, max_pixels=300_000)).height == 100_000
    with pytest.raises(imaging.TooLarge, match="its 100,000 rows cost as much memory as 200,000 more pixels"):
        imaging.flip(tall, limits=replace(imaging.NO_LIMITS, max_pixels=299_999))


def test_a_quarter_turns_rows_count_for_its_columns():
    # One row of 100,000 pixels, turned by its orientation: the turned copy has 100,000 rows.
    wide = encode(Image.new("L", (100_000, 1), 7), "PNG", exif=_tags(Orientation=6))
    assert imaging.flip(wide, limits=replace(imaging.NO_LIMITS, max_pixels=200_001)).height == 100_000
    with pytest.raises(imaging.TooLarge, match="its 1 rows and 100,000 once turned cost"):
        imaging.flip(wide, limits=replace(imaging.NO_LIMITS, max_pixels=200_000))
    unturned = encode(Image.new("L", (100_000, 1), 7), "PNG")
    assert imaging.flip(unturned, limits=replace(imaging.NO_LIMITS, max_pixels=100_002)).height == 1


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_pixels_count_for_the_memory_their_flips_take(fmt):
    source = _phone_picture(fmt, photo((64, 48)))
    weighted = int(64 * 48 * WEIGHTS[fmt])
    within = replace(imaging.NO_LIMITS, max_pixels=counted((64, 48), WEIGHTS[fmt]))
    assert imaging.flip(source, limits=within).format == fmt
    with pytest.raises(imaging.TooLarge, match=f"the limit is {int((weighted - 1) / WEIGHTS[fmt]):,} for {fmt}"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=weighted - 1))


PHONE_PEAK_SCRIPT = """
import io, sys
from pathlib import Path
from PIL import Image
from service import imaging

def status(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(field + ":")).split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
# Warm, with a small picture of the same kind: imports and codecs loaded, and nothing of the
# measured one's size left in the heap for it to reuse.
im = Image.open(io.BytesIO(data))
small = io.BytesIO()
Image.effect_noise((64, 48), 64).convert(im.mode).save(small, im.format, quality=90)
imaging.flip(small.getvalue())
Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on
before = status("VmRSS")
imaging.flip(data)
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize(("fmt", "mode"), [(fmt, mode) for fmt in ("HEIF", "AVIF", "WEBP", imaging.LOSSLESS_WEBP)
                                           for mode in ("RGB", "RGBA")])
def test_a_flip_holds_at_most_the_memory_its_pixels_count_for(tmp_path, fmt, mode):
    # In a process of its own, as the replica runs (the allocator of the image): what one flip
    # holds at once above what the process held before it.
    size = (2016, 1512)  # 3 MP, a quarter of a phone's photo
    picture = decode(make_sample(*size)).convert("RGB")
    if mode == "RGBA":
        picture.putalpha(picture.convert("L"))
    source = tmp_path / "phone"
    if fmt == imaging.LOSSLESS_WEBP:
        source.write_bytes(encode(picture, "WEBP", lossless=True, quality=imaging.WEBP_LOSSLESS_EFFORT))
    else:
        source.write_bytes(encode(picture, fmt, **imaging._FORMAT_PARAMS[fmt](picture, b"")))  # the fast settings
    done = subprocess.run([sys.executable, "-c", PHONE_PEAK_SCRIPT, str(source)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent, env=allocator_environment())
    assert done.returncode == 0, done.stderr
    peak, pixels = int(done.stdout), size[0] * size[1]
    allowed = imaging.PEAK_BYTES_PER_PIXEL[fmt, mode == "RGBA"]
    print(f"{fmt} {mode}: one flip of {pixels / 1e6:.1f} MP held {peak / 2**20:.0f} MiB at most, "
          f"{peak / pixels:.1f} bytes a pixel (counted as {allowed})")
    assert peak < allowed * pixels + 16 * 2**20  # and the codecs' fixed buffers


THREE_SAMPLES, FOUR_SAMPLES = (imaging.PEAK_BYTES_PER_PIXEL[kind, False]
                               for kind in (imaging.JPEG_3_SAMPLES, imaging.JPEG_4_SAMPLES))


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


def _damaged_phone_pictures() -> dict[str, bytes]:
    cases = {}
    for fmt in PHONE_FORMATS:
        source = _phone_picture(fmt, photo((96, 64)))
        for fraction in (0.05, 0.3, 0.6, 0.95):
            cases[f"{fmt} cut at {fraction:.0%}"] = source[: int(len(source) * fraction)]
        cases[f"{fmt} only its header"] = source[:32]
        cases[f"{fmt} junk after its ftyp"] = source[:32] + random.Random(1).randbytes(4000)
    return cases


DAMAGED_PHONE_PICTURES = _damaged_phone_pictures()


@pytest.mark.parametrize("data", list(DAMAGED_PHONE_PICTURES.values()), ids=list(DAMAGED_PHONE_PICTURES))
def test_damaged_heic_and_avif_are_not_images(data):
    with pytest.raises(imaging.NotAnImage):
        imaging.flip(data)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_with_bytes_changed_are_flipped_or_not_images(fmt):
    # The video decoders conceal errors in the coded data: a picture of some garbage, or a 400,
    # never anything else.
    source = _phone_picture(fmt, photo((96, 64)))
    rng = random.Random(2)
    outcomes = []
    for _ in range(60):
        damaged = bytearray(source)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            outcomes.append(imaging.flip(bytes(damaged)).format)
        except imaging.NotAnImage:
            outcomes.append("not an image")
        except imaging.TooLarge:  # a size field changed
            outcomes.append("too large")
    assert set(outcomes) <= {fmt, "not an image", "too large"} and "not an image" in outcomes
