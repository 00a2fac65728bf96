"""The bundled sample photo: made deterministically rather than committed, at the size of the
article's photo (6000x4000 = 24 megapixels, about 6.5 MB of JPEG)."""

from __future__ import annotations

import functools
import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 6000, 4000
SEED = 2018  # the article's year; any fixed seed gives the same bytes on every run
QUALITY = 90
# Film-like grain: without it a synthetic scene compresses far below a real photo's size.
GRAIN = 0.22


def make_sample(width: int = WIDTH, height: int = HEIGHT, seed: int = SEED) -> bytes:
    """A photo-like JPEG: a landscape of sky, hills and sun under random grain."""
    rng = random.Random(seed)
    small_w, small_h = max(width // 10, 1), max(height // 10, 1)
    scene = Image.new("RGB", (small_w, small_h))
    draw = ImageDraw.Draw(scene)
    for y in range(small_h):
        t = y / small_h
        draw.line([(0, y), (small_w, y)], fill=(int(80 + 100 * t), int(140 + 66 * t), int(230 - 133 * t)))
    for _ in range(12):
        x, y = rng.randrange(-small_w // 6, small_w), rng.randrange(small_h * 3 // 8, small_h)
        r = rng.randrange(small_w // 15, small_w // 3)
        colour = (rng.randrange(20, 120), rng.randrange(80, 180), rng.randrange(10, 90))
        draw.ellipse([x - r, y - r // 2, x + r, y + r], fill=colour)
    sun_x, sun_y, sun_r = small_w * 4 // 5, small_h // 5, max(small_w // 15, 1)
    draw.ellipse([sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r], fill=(255, 240, 200))
    scene = scene.resize((width, height), Image.Resampling.BICUBIC)

    grain_size = (max(width // 2, 1), max(height // 2, 1))
    channels = [
        Image.frombytes("L", grain_size, rng.randbytes(grain_size[0] * grain_size[1])).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        for _ in range(3)
    ]
    photo = Image.blend(scene, Image.merge("RGB", channels), GRAIN)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


@functools.lru_cache(maxsize=4)
def load_sample(path: str | None = None) -> bytes:
    """The sample's bytes: from `path` when that file exists (the image bakes it in at
    build time), else made once and kept for the life of the process."""
    if path and Path(path).is_file():
        return Path(path).read_bytes()
    return make_sample()


if __name__ == "__main__":
    # python -m service.sample OUT.jpg: write the sample, e.g. while building the image.
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "sample.jpg")
    target.write_bytes(make_sample())
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
