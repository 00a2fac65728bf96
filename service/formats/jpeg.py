"""JPEG (and MPO, a phone's JPEG with a preview appended, written back as its main JPEG).

A flip moves the DCT coefficients (service.formats.jpeg_lossless: nothing decoded, nothing lost)
when the picture's size allows; otherwise it decodes and re-encodes with the source's own
quantisation tables and chroma subsampling. Either way its EXIF (less the orientation, which the
flip applies), XMP, ICC profile, comments and other APPn segments are kept. The scans and
segments are counted before anything is read: each costs a pass over the picture or more."""

from __future__ import annotations

from PIL import JpegImagePlugin

from service.formats import jpeg_lossless, jpeg_markers, metadata
from service.formats.base import (
    LOSSLESS,
    Format,
    TooCostly,
    Written,
    answer_too_large,
    pillow_reading,
)

# A JPEG has tens of segments besides its scans and their tables, a few hundred with a long XMP
# or ICC profile split over many (jpeg_markers.counts). A flip of one with 100,000 empty comments
# (400 KB) takes 13 s, most of it in TurboJPEG's transform (its marker list grows by a walk to its
# end), one of 400,000 over 100 s; of 10,000, 0.16 s.
MOST_SEGMENTS = 10_000
# The sample precisions the JPEG standard has besides 8 (12 for DCT coding, 2 to 16 for lossless
# coding): Pillow reads 8-bit JPEG only.
UNREAD_PRECISIONS = frozenset(range(2, 17)) - {8}
# The decoder gets the data in blocks this small, so that the deadline is looked at more often:
# a block of a progressive JPEG may hold hundreds of scans. (1 % of a decode.)
DECODER_BLOCK = 16 * 1024
# A JPEG's coefficients take 2 bytes a sample: TurboJPEG's lossless transform holds the source's
# and the flipped ones, a progressive decode holds them beside the decoded picture. 4:2:0 colour
# (1.5 samples a pixel) fits the 8 bytes the limits count a pixel for (6.6 lossless, 8.0
# re-encoded, at 24 MP); 4:4:4 colour and full-resolution CMYK held 13 and 17 lossless (10.4 and
# 12.6 re-encoded): a 50 MP CMYK JPEG of 2.3 MB held 790 MB.
THREE_SAMPLES, FOUR_SAMPLES = "JPEG of 3 samples a pixel", "JPEG of 4 samples a pixel"


class Jpeg(Format):
    name, media_type = "JPEG", "image/jpeg"
    media_type_aliases = ("image/jpg", "image/pjpeg")
    also_named = ("MPO",)
    signatures = (b"\xff\xd8",)
    peak_bytes_per_pixel = {(THREE_SAMPLES, False): 13, (FOUR_SAMPLES, False): 17}
    only_first_frame = True  # an MPO's preview

    def walk(self, data, limits):
        scans, segments = jpeg_markers.counts(data, limits.max_scans, MOST_SEGMENTS)
        if scans > limits.max_scans:
            raise TooCostly(f"the JPEG has more than {limits.max_scans:,} scans, the most a picture may have "
                            "(a progressive JPEG has about 10): each costs a pass over every pixel")
        if segments > MOST_SEGMENTS:
            raise TooCostly(f"the JPEG has more than {MOST_SEGMENTS:,} segments besides its scans and their "
                            "tables (metadata, comments), the most a picture may have: reading each costs time")
        return jpeg_markers.frame(data)

    def why_unread(self, data):
        bits = jpeg_markers.precision(data)
        if bits in UNREAD_PRECISIONS:
            return f"{bits}-bit JPEG pictures are not supported; send an 8-bit JPEG"
        return None

    def opened(self, im, walk):
        im.decodermaxblock = DECODER_BLOCK

    def memory_format(self, frame, data, walk):
        return FOUR_SAMPLES if walk.samples > 3 else THREE_SAMPLES if walk.samples > 2 else frame.format

    def least_bytes(self, data, walk):
        return walk.least_bytes

    def own_flip(self, im, data, walk, operation, flip, limits, spans, deadline, lossless):
        """The JPEG transposed by `operation` in the DCT domain, or why it cannot be (Flipped.reason).

        tjTransform is one C call that the deadline cannot interrupt: the scan limit, checked
        before (walk), bounds its work, and the deadline is checked on both sides. Data TurboJPEG
        finds damaged goes on to Pillow, which refuses what is truly corrupt and reads what it
        tolerates (junk before a marker) as it always did."""
        if not lossless:
            return "asked"
        deadline.check()
        try:
            with spans.timing("flip"):
                written = jpeg_lossless.transform(data, operation)
        except jpeg_lossless.Unavailable:
            return "library missing"
        except jpeg_lossless.NotPerfect as exc:
            return exc.reason
        except jpeg_lossless.DamagedJpeg:
            return "damaged"
        deadline.check()
        if len(written) > limits.max_answer_bytes:
            raise TooCostly(answer_too_large(limits.max_answer_bytes))
        turned = jpeg_lossless.OPERATIONS[operation] in jpeg_lossless.TJXOP_QUARTER_TURNS
        width, height = im.size[::-1] if turned else im.size
        return Written(written, width, height, 1, LOSSLESS)

    def save_params(self, im, data, params, walk, turned, later_page):
        params = {**params, **metadata.exif_params(metadata.read(im), turned)}
        # The source's quantization tables and chroma subsampling: a fixed quality would either
        # lose detail or inflate the file.
        with pillow_reading(im):
            params["subsampling"] = JpegImagePlugin.get_sampling(im)
        if getattr(im, "quantization", None):
            params["qtables"] = im.quantization
        if im.info.get("progressive"):
            params["progressive"] = True
        return params


FORMAT = Jpeg()
