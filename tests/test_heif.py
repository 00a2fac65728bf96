"""HEIC and AVIF (service/formats/heif.py): what a viewer shows, flipped; metadata, subsampling, limits."""

import io
import random
import struct
from dataclasses import replace

import pytest
from PIL import ExifTags, Image

from service import imaging
from service.formats import heif
from service.sample import make_sample
from tests.flips import SRGB, WEIGHTS, counted, exif_tags
from tests.pictures import (
    SIZE,
    animation,
    decode,
    encode,
    photo,
    picture,
    psnr,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM
ACROSS = Image.Transpose.FLIP_LEFT_RIGHT


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


@pytest.mark.parametrize("later_only", ["icc_profile", "exif"])
def test_a_later_heic_images_own_metadata_is_kept(later_only):
    # pillow-heif writes a later image's ICC profile and EXIF from that image's own info.
    first, second = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    second.info[later_only] = SRGB if later_only == "icc_profile" else exif_tags(Software="second")
    source = encode(first, "HEIF", save_all=True, append_images=[second], quality=90)

    result = imaging.flip(source)

    flipped = Image.open(io.BytesIO(result.data))
    flipped.seek(1)
    kept = flipped.info.get("icc_profile") if later_only == "icc_profile" else flipped.getexif().get(
        ExifTags.Base.Software)
    assert kept == (SRGB if later_only == "icc_profile" else "second")
    assert result.dropped == ()


def test_a_heic_metadata_item_of_a_type_libheif_cannot_write_is_left_out_not_a_500():
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "camera"
    source = encode(picture("RGB"), "HEIF", exif=exif.tobytes())
    item = source.index(b"Exif", source.index(b"infe"))
    source = source[:item] + "Exiæ".encode("latin-1") + source[item + 4 :]  # a type of five bytes in UTF-8
    assert [item["type"] for item in decode(source).info["metadata"]] == ["Exiæ"]
    flipped = imaging.flip(source)
    assert decode(flipped.data).size == picture("RGB").size


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
# dB for a smooth one. The fast encoder settings (heif.HEIF_PRESET, AVIF_SPEED) keep a grainy
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
        assert heif.av1_subsampling(imaging.flip(source).data) == (chroma if mode != "L" else None)


@pytest.mark.parametrize(("boxes_before", "found"), [(heif.AV1C_MOST - 1, "4:4:4"), (heif.AV1C_MOST, None)])
def test_an_avifs_subsampling_is_looked_for_in_its_first_configuration_boxes_only(boxes_before, found):
    # 24 MB of configuration boxes took 2 s to look through; a picture has one an image.
    monochrome, full = b"av1C\x81\x00\x10\x00", b"av1C\x81\x00\x00\x00"
    assert heif.av1_subsampling(monochrome * boxes_before + full) == found


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


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_heic_and_avif_pixels_count_for_the_memory_their_flips_take(fmt):
    source = _phone_picture(fmt, photo((64, 48)))
    weighted = int(64 * 48 * WEIGHTS[fmt])
    within = replace(imaging.NO_LIMITS, max_pixels=counted((64, 48), WEIGHTS[fmt]))
    assert imaging.flip(source, limits=within).format == fmt
    with pytest.raises(imaging.TooLarge, match=f"the limit is {int((weighted - 1) / WEIGHTS[fmt]):,} for {fmt}"):
        imaging.flip(source, limits=replace(imaging.NO_LIMITS, max_pixels=weighted - 1))


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



def test_an_avif_sequence_keeps_its_own_times_not_the_clock_of_its_flip():
    # libavif writes the time of writing into the movie, track and media headers.
    made_at = (3_900_000_000, 3_900_000_060)  # seconds since 1904, in 2027
    source = heif.with_times(animation("AVIF")[0], made_at)
    assert heif.movie_times(source) == made_at
    flipped = heif.box_times(imaging.flip(source).data)
    assert {kind for kind, _ in flipped} == {b"mvhd", b"tkhd", b"mdhd"}
    assert {times for _, times in flipped} == {made_at}


def test_movie_boxes_nested_past_any_sequence_cost_a_bounded_walk():
    nested = b""
    for _ in range(5_000):
        nested = (len(nested) + 8).to_bytes(4, "big") + b"moov" + nested
    assert heif.movie_times(nested) == (0, 0)
    assert heif.movie_times(b"\0\0\0\x08trak" * 100_000) == (0, 0)
