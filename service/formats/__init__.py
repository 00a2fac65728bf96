"""One module per picture format. Each owns everything about its format: recognising it, the one
walk of its structure before Pillow reads it (bounds and what the flip needs), its pixel weight,
its own flip where Pillow's is not the one, and what its writer is given. service.imaging runs
the flow that every format shares and reaches a format only through FORMATS.

Adding a format: a module with a base.Format subclass for it, and a line here."""

from __future__ import annotations

from service.formats import bmp, gif, heif, jpeg, png, tiff, webp
from service.formats.base import Format

# Pillow's name -> the format; the only formats read and written, tried in this order (AVIF
# before HEIF, so that AVIF files, which both would accept, are read as AVIF).
FORMATS: dict[str, Format] = {f.name: f for f in (
    jpeg.FORMAT,
    png.FORMAT,
    gif.FORMAT,
    webp.FORMAT,
    tiff.FORMAT,
    bmp.FORMAT,
    heif.AVIF,
    heif.HEIF,
)}
# Pillow format name -> media type.
MEDIA_TYPES = {name: f.media_type for name, f in FORMATS.items()}
# Every Content-Type a picture may be sent under: each format's own, and the aliases clients use.
READ_MEDIA_TYPES = frozenset(MEDIA_TYPES.values()) | {alias for f in FORMATS.values() for alias in f.media_type_aliases}
# Every Pillow name of a picture the service reads -> the format it is written back as.
BY_PILLOW_NAME = {**FORMATS, **{other: f for f in FORMATS.values() for other in f.also_named}}


def recognised(data: bytes) -> Format | None:
    """The format whose signature `data` starts with, for its walk before Pillow reads it."""
    return next((f for f in FORMATS.values() if f.recognises(data)), None)
