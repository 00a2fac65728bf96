"""GIF (service/formats/gif.py): every frame flipped as a viewer shows it; blocks bounded."""

import io

import pytest
from PIL import Image, ImageSequence

from service import imaging
from service.formats import gif
from tests.pictures import (
    decode,
    encode,
    gif_comment_of_sub_blocks,
    gif_of,
    gif_padded,
    local_palettes_gif,
    moving_square_gif,
    picture,
)

DOWN = Image.Transpose.FLIP_TOP_BOTTOM
ACROSS = Image.Transpose.FLIP_LEFT_RIGHT


def test_bilevel_gif_keeps_its_colours():
    # GIF has no bilevel mode: Pillow reads it as L and writes it as P, same colours.
    original = decode(encode(picture("1"), "GIF"))
    flipped = decode(imaging.flip(encode(picture("1"), "GIF")).data)
    assert flipped.convert("RGB").tobytes() == original.convert("RGB").transpose(DOWN).tobytes()


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


# 25 MB of empty extensions (3 bytes each) would cost the whole deadline to walk; Pillow reads an
# extension a sub-block a loop turn: a comment of 12 million one-byte sub-blocks took the deadline.
@pytest.mark.parametrize(("padded", "bound", "refusal", "under"), [
    (gif_padded, gif.MOST_BLOCKS, "more than 20,000 blocks", 10),
    (gif_comment_of_sub_blocks, gif.MOST_SUB_BLOCKS, "more than 200,000 sub-blocks", 100),
], ids=["blocks", "sub-blocks"])
def test_a_gif_of_more_blocks_than_any_animation_has_is_refused_before_its_pixels(padded, bound, refusal, under):
    with pytest.raises(imaging.TooCostly, match=refusal):
        imaging.flip(padded(bound))
    flipped = imaging.flip(padded(bound - under))
    assert decode(flipped.data).convert("RGB").tobytes() == picture("P", (16, 16)).convert("RGB").transpose(
        DOWN).tobytes()

