"""A JPEG written marker by marker, for the scan limits: a grey progressive picture of as many
scans as asked, each of a few bytes, that a decoder still walks block by block."""

import math
import struct


def many_scans_jpeg(size: tuple[int, int], scans: int) -> bytes:
    """A grey progressive JPEG of `scans` + 1 scans that hold almost nothing: a DC scan, then AC
    scans whose end-of-band runs cover every block in a few bytes. The decoder still walks every
    block for each scan, so a small file costs time in proportion to pixels x scans."""
    width, height = size
    blocks = math.ceil(width / 8) * math.ceil(height / 8)

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    def huffman(table: int, length: int, symbols: list[int]) -> bytes:
        counts = [0] * 16
        counts[length - 1] = len(symbols)
        return segment(0xC4, bytes([table, *counts, *symbols]))

    def entropy(codes: list[tuple[int, int]]) -> bytes:
        """(value, bits) codes, padded with ones and byte-stuffed."""
        out, acc, filled = bytearray(), 0, 0
        for value, bits in codes + [((1 << 7) - 1, 7)]:
            acc, filled = (acc << bits) | value, filled + bits
            while filled >= 8:
                filled -= 8
                out.append((acc >> filled) & 0xFF)
                if out[-1] == 0xFF:
                    out.append(0)
        return bytes(out)

    def end_of_band_runs(count: int) -> list[tuple[int, int]]:
        # Symbol r<<4 (code r, 4 bits) means a run of 2**r + the next r bits, up to 32767.
        codes = []
        while count:
            run = min(count, 32767)
            r = run.bit_length() - 1
            codes += [(r, 4), (run - (1 << r), r)] if r else [(r, 4)]
            count -= run
        return codes

    sos = lambda ss, se: segment(0xDA, bytes([1, 1, 0x00, ss, se, 0x00]))  # noqa: E731
    dc_scan = sos(0, 0) + entropy([(0, 1)] * blocks)  # every block's DC difference 0: code "0"
    ac_scan = sos(1, 63) + entropy(end_of_band_runs(blocks))
    return b"".join([
        b"\xff\xd8",
        segment(0xDB, bytes([0]) + bytes([1] * 64)),
        segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])),
        huffman(0x00, 1, [0x00]),
        huffman(0x10, 4, [r << 4 for r in range(15)]),
        dc_scan,
        ac_scan * scans,
        b"\xff\xd9",
    ])
