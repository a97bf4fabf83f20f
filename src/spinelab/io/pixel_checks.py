"""Header and pixel-data checks that run before any decoder touches a DICOM file's pixels.

Native decoders trust the header: dicomsdl copies ``Rows x Columns x 2`` bytes out of whatever the PixelData
element holds (a 65535x65535 header with 8 kB of data is a segmentation fault), and pydicom / pylibjpeg decode
a JPEG stream cut in half into a plausible-looking half slice. So every file is first walked here, in pure
Python, over a read-only memory map (only the pages of the element headers are read, never the whole file):

* the element structure up to PixelData must be intact (every length inside the file, sequences closed);
* Rows, Columns, SamplesPerPixel, BitsAllocated, BitsStored and NumberOfFrames must be within ``MAX_*``;
* native PixelData must hold exactly ``Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames``
  bytes (one pad byte allowed);
* encapsulated PixelData must have an offset-table item, at least one non-empty fragment per frame, a
  sequence delimiter, and JPEG-family streams must start with a start marker and end with the end-of-image
  marker ``FF D9``; RLE fragments must carry a consistent segment table.

A failure raises :class:`CorruptPixelDataError` (a ``ValueError``) whose message says what is wrong.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CorruptPixelDataError", "PixelSummary", "check_pixel_data", "check_layout", "looks_like_element",
           "MAX_DIM", "MAX_PIXEL_BYTES"]

#: Largest accepted Rows / Columns (whole-slide images are not a slice series).
MAX_DIM = 16384
#: Largest accepted uncompressed pixel payload of one file.
MAX_PIXEL_BYTES = 1 << 32
#: Deepest sequence nesting walked before the structure is called corrupt.
_MAX_DEPTH = 16

_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
_RLE = "1.2.840.10008.1.2.5"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: (tag group, element, VR bytes, short length) and a 32-bit length, per byte order (True: little endian).
_STRUCTS = {True: (struct.Struct("<HH2sH"), struct.Struct("<I")), False: (struct.Struct(">HH2sH"), struct.Struct(">I"))}
_WANTED = {0x00280002: "samples", 0x00280008: "frames", 0x00280010: "rows", 0x00280011: "cols",
           0x00280100: "bits_allocated", 0x00280101: "bits_stored"}


class CorruptPixelDataError(ValueError):
    """A DICOM file's header and pixel data do not agree, or its structure is broken."""


@dataclass(frozen=True)
class PixelSummary:
    """What the walk found: the image layout and where its pixels are."""

    transfer_syntax: str
    rows: int
    cols: int
    samples: int
    bits_allocated: int
    bits_stored: int
    frames: int
    encapsulated: bool
    checked: bool  # False for deflated data (pixels cannot be located without inflating)
    pixel_offset: int = -1  # file offset of the PixelData value (dicomsdl must find it at the same place)
    ordered: bool = True  # elements in ascending tag order at every level (dicomsdl stops parsing otherwise)

    @property
    def native_safe(self) -> bool:
        """Whether dicomsdl may open this file: checked, in tag order (it quits early on disorder and then
        dereferences pixel data it never found)."""
        return self.checked and self.ordered


def looks_like_element(head: bytes) -> bool:
    """Whether ``head`` starts like a little-endian group 0002/0008 element (explicit or implicit VR)."""
    if len(head) < 8:
        return False
    group = struct.unpack_from("<H", head)[0]
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _LONG_VRS or head[4:6] in _SHORT_VRS:
        return True
    return struct.unpack_from("<I", head, 4)[0] < 1 << 16  # implicit VR: a plausible first length


class _Walker:
    """Walks DICOM elements over a byte buffer; raises ``CorruptPixelDataError`` on any inconsistency."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size = buf, size
        self.ordered = True

    def need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.size:
            raise CorruptPixelDataError(f"file ends inside {what} (offset {pos}, {self.size} bytes in the file)")

    def header(self, pos: int, explicit: bool, little: bool) -> tuple[int, bytes | None, int, int]:
        """``(tag, vr, length, value offset)`` of the element at ``pos``."""
        if pos + 8 > self.size:
            self.need(pos, 8, "an element header")
        head, u32 = _STRUCTS[little]
        group, elem, vr, short = head.unpack_from(self.buf, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or not explicit:  # items / delimiters never carry a VR
            return tag, None, u32.unpack_from(self.buf, pos + 4)[0], pos + 8
        if vr in _LONG_VRS:
            self.need(pos, 12, "an element header")
            return tag, vr, u32.unpack_from(self.buf, pos + 8)[0], pos + 12
        if vr in _SHORT_VRS:
            return tag, vr, short, pos + 8
        raise CorruptPixelDataError(f"unknown value representation {vr!r} at offset {pos}")

    def skip_sequence(self, pos: int, explicit: bool, little: bool, depth: int) -> int:
        """Skip an undefined-length sequence starting at ``pos``; return the offset after its delimiter."""
        if depth > _MAX_DEPTH:
            raise CorruptPixelDataError("sequences nested too deeply")
        while True:
            tag, _vr, length, val = self.header(pos, explicit, little)
            if tag == _SEQ_END:
                return val
            if tag != _ITEM:
                raise CorruptPixelDataError(f"expected a sequence item at offset {pos}")
            if length != _UNDEFINED:
                self.need(val, length, "a sequence item")
                pos = val + length
                continue
            pos = self.dataset(val, explicit, little, depth + 1, stop_at_item_end=True)[0]

    def dataset(self, pos: int, explicit: bool, little: bool, depth: int, *, stop_at_item_end: bool = False,
                values: dict[str, int | str] | None = None) -> tuple[int, int | None]:
        """Walk elements from ``pos``; return (offset reached, offset of the PixelData header or None)."""
        last = -1
        while pos < self.size:
            start = pos
            tag, vr, length, val = self.header(pos, explicit, little)
            if tag == _ITEM_END and stop_at_item_end:
                return val, None
            if tag <= last:
                self.ordered = False
            last = tag
            if tag == _PIXEL_DATA and values is not None:
                return start, start
            if length == _UNDEFINED:
                pos = self.skip_sequence(val, explicit, little, depth + 1)
                continue
            if val + length > self.size:
                self.need(val, length, f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if values is not None and tag in _WANTED:
                values[_WANTED[tag]] = self.value(tag, val, length, little)
            pos = val + length
        if stop_at_item_end:
            raise CorruptPixelDataError("sequence item without an end")
        return pos, None

    def value(self, tag: int, val: int, length: int, little: bool) -> int:
        raw = bytes(self.buf[val:val + length])
        if tag == 0x00280008:  # NumberOfFrames is an IS string
            try:
                return int(raw.decode("ascii", "replace").strip("\x00 ").split("\\")[0])
            except ValueError as err:
                raise CorruptPixelDataError(f"NumberOfFrames {raw!r} is not a number") from err
        if length < 2:
            raise CorruptPixelDataError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is empty")
        return struct.unpack_from("<H" if little else ">H", raw)[0]


def _expected_bytes(s: PixelSummary) -> int:
    return s.rows * s.cols * s.samples * (s.bits_allocated // 8) * s.frames


def check_layout(rows: int, cols: int, samples: int, bits_allocated: int, bits_stored: int, frames: int) -> None:
    """The size limits of ``check_pixel_data`` on header values read elsewhere (e.g. by pydicom for a deflated
    file, whose pixels the walk cannot reach); raises ``CorruptPixelDataError``."""
    _check_layout(PixelSummary("", rows, cols, samples, bits_allocated, bits_stored, frames, False, False))


def _check_layout(s: PixelSummary) -> None:
    if not (1 <= s.rows <= MAX_DIM and 1 <= s.cols <= MAX_DIM):
        raise CorruptPixelDataError(f"image size {s.rows}x{s.cols} outside 1..{MAX_DIM}")
    if s.bits_allocated not in (8, 16, 32):
        raise CorruptPixelDataError(f"BitsAllocated {s.bits_allocated} is not 8, 16 or 32")
    if not 1 <= s.bits_stored <= s.bits_allocated:
        raise CorruptPixelDataError(f"BitsStored {s.bits_stored} outside 1..BitsAllocated ({s.bits_allocated})")
    if s.samples not in (1, 3):
        raise CorruptPixelDataError(f"SamplesPerPixel {s.samples} is not 1 (grey) or 3 (colour)")
    if s.frames < 1:
        raise CorruptPixelDataError(f"NumberOfFrames {s.frames} is not positive")
    if _expected_bytes(s) > MAX_PIXEL_BYTES:
        raise CorruptPixelDataError(f"header claims {_expected_bytes(s)} bytes of pixels (limit {MAX_PIXEL_BYTES})")


def _check_fragments(w: _Walker, pos: int, s: PixelSummary) -> None:
    """Walk the items of encapsulated PixelData whose value starts at ``pos``."""
    tag, _vr, length, val = w.header(pos, True, True)
    if tag != _ITEM or length == _UNDEFINED:
        raise CorruptPixelDataError("encapsulated pixel data without a basic offset table item")
    w.need(val, length, "the basic offset table")
    pos = val + length
    fragments: list[tuple[int, int]] = []
    while True:
        tag, _vr, length, val = w.header(pos, True, True)
        if tag == _SEQ_END:
            break
        if tag != _ITEM or length == _UNDEFINED:
            raise CorruptPixelDataError(f"broken pixel data fragment at offset {pos}")
        if length == 0:
            raise CorruptPixelDataError(f"empty pixel data fragment at offset {pos}")
        w.need(val, length, f"pixel data fragment {len(fragments) + 1} (stream truncated)")
        fragments.append((val, length))
        pos = val + length
    if len(fragments) < s.frames:
        raise CorruptPixelDataError(f"{len(fragments)} pixel data fragment(s) for {s.frames} frame(s)")
    first, first_len = fragments[0]
    last, last_len = fragments[-1]
    if s.transfer_syntax == _RLE:
        _check_rle(w, first, first_len, s)
        return
    if not _is_jpeg_family(s.transfer_syntax):
        return  # video and other streams: structure only
    if s.frames == 1 or len(fragments) == s.frames:
        start = bytes(w.buf[first:first + 2])
        if start not in (b"\xff\xd8", b"\xff\x4f") and bytes(w.buf[first + 4:first + 8]) != b"jP  ":
            raise CorruptPixelDataError("compressed stream does not start with a JPEG/JPEG 2000 start marker")
    if s.frames == 1:
        _check_stream_header(bytes(w.buf[first:first + min(first_len, 65536)]), s)
    tail = bytes(w.buf[max(last, last + last_len - 8):last + last_len]).rstrip(b"\x00\xff")  # pad bytes
    if not tail.endswith(b"\xff\xd9"):
        raise CorruptPixelDataError("compressed stream has no end-of-image marker (FF D9): truncated or corrupt")


def _check_stream_header(head: bytes, s: PixelSummary) -> None:
    """The image size, components and precision coded in a JPEG / JPEG-LS / JPEG 2000 stream vs the header.

    Native decoders size their output from the DICOM header and write what the stream holds into it, so a
    stream with more rows, more components or more bits than the header says is a heap overflow.
    """
    found = _jpeg_frame(head) if head[:2] == b"\xff\xd8" else _j2k_size(head) if head[:2] == b"\xff\x4f" else None
    if found is None:
        return  # JP2 boxes or an unusual marker order: left to the decoder (and its warnings)
    precision, rows, cols, comps = found
    if rows and (rows, cols) != (s.rows, s.cols):
        raise CorruptPixelDataError(f"compressed stream is {rows}x{cols}, the header says {s.rows}x{s.cols}")
    if comps != s.samples:
        raise CorruptPixelDataError(f"compressed stream has {comps} component(s), SamplesPerPixel is {s.samples}")
    if precision > s.bits_allocated:
        raise CorruptPixelDataError(f"compressed stream holds {precision}-bit samples, BitsAllocated is "
                                    f"{s.bits_allocated}")


def _jpeg_frame(head: bytes) -> tuple[int, int, int, int] | None:
    """``(precision, rows, cols, components)`` from a JPEG or JPEG-LS start-of-frame marker."""
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(head[pos + 2:pos + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 10 > len(head):
                return None
            p, y, x, nf = head[pos + 4], int.from_bytes(head[pos + 5:pos + 7], "big"), \
                int.from_bytes(head[pos + 7:pos + 9], "big"), head[pos + 9]
            return p, y, x, nf
        if marker == 0xDA or length < 2:  # start of scan before a frame header: not a stream we know
            return None
        pos += 2 + length
    return None


def _j2k_size(head: bytes) -> tuple[int, int, int, int] | None:
    """``(max precision, rows, cols, components)`` from a JPEG 2000 codestream's SIZ marker."""
    if len(head) < 42 or head[2:4] != b"\xff\x51":
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, 8)
    comps = struct.unpack_from(">H", head, 40)[0]
    if len(head) < 42 + 3 * comps:
        return None
    precision = max(((head[42 + 3 * c] & 0x7F) + 1) for c in range(comps)) if comps else 0
    return precision, ysiz - yo, xsiz - xo, comps


def _is_jpeg_family(ts: str) -> bool:
    """JPEG, JPEG-LS, JPEG 2000 and HTJ2K syntaxes: streams that start with SOI/SOC and end with FF D9."""
    prefix = "1.2.840.10008.1.2.4."
    if not ts.startswith(prefix) or not ts[len(prefix):].isdigit():
        return False
    n = int(ts[len(prefix):])
    return 50 <= n <= 93 or 201 <= n <= 203


def _check_rle(w: _Walker, pos: int, length: int, s: PixelSummary) -> None:
    if length < 64:
        raise CorruptPixelDataError("RLE fragment shorter than its 64-byte header")
    n, *offsets = struct.unpack_from("<16I", w.buf, pos)
    if n != s.samples * s.bits_allocated // 8:
        raise CorruptPixelDataError(f"RLE header has {n} segments, the image needs {s.samples * s.bits_allocated // 8}")
    used = offsets[:n]
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:], strict=False)) or used[-1] >= length:
        raise CorruptPixelDataError("RLE segment offsets are inconsistent")


def check_pixel_data(path: str | Path) -> PixelSummary:
    """Check one DICOM file's header against its pixel data without decoding anything.

    Args:
        path: a (single- or multi-frame) DICOM file, with or without preamble and file meta.

    Returns:
        The layout found (``checked=False`` only for deflated files, which pydicom must inflate first).

    Raises:
        CorruptPixelDataError: structure broken, limits exceeded, or pixel data inconsistent with the header.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise CorruptPixelDataError(f"file too short for DICOM ({size} bytes)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _walk(_Walker(buf, size))
        except (struct.error, IndexError, OverflowError) as err:
            raise CorruptPixelDataError(f"broken element structure ({err})") from None


def _walk(w: _Walker) -> PixelSummary:
    pos = 132 if w.size >= 132 and bytes(w.buf[128:132]) == b"DICM" else 0
    ts = ""
    if w.size >= pos + 4 and struct.unpack_from("<H", w.buf, pos)[0] == 0x0002:
        while pos + 8 <= w.size and struct.unpack_from("<H", w.buf, pos)[0] == 0x0002:
            tag, _vr, length, val = w.header(pos, True, True)
            if length == _UNDEFINED:
                raise CorruptPixelDataError("undefined length in the file meta group")
            w.need(val, length, "the file meta group")
            if tag == 0x00020010:
                ts = bytes(w.buf[val:val + length]).decode("ascii", "replace").strip("\x00 ")
            pos = val + length
    if ts in _DEFLATED:
        return PixelSummary(ts, 0, 0, 1, 16, 16, 1, False, checked=False)
    little = ts != "1.2.840.10008.1.2.2"
    if ts == "1.2.840.10008.1.2":
        explicit = False
    elif ts:
        explicit = True
    else:  # no file meta: guess like pydicom's force mode, from whether a VR follows the first tag
        explicit = w.size >= pos + 6 and (bytes(w.buf[pos + 4:pos + 6]) in _LONG_VRS | _SHORT_VRS)
    values: dict[str, int | str] = {}
    _end, pixel_at = w.dataset(pos, explicit, little, 0, values=values)
    if pixel_at is None:
        raise CorruptPixelDataError("no PixelData element")
    if "rows" not in values or "cols" not in values:
        raise CorruptPixelDataError("no Rows/Columns in the header")
    bits_allocated = int(values.get("bits_allocated", 16))
    s = PixelSummary(
        transfer_syntax=ts, rows=int(values["rows"]), cols=int(values["cols"]),
        samples=int(values.get("samples", 1)), bits_allocated=bits_allocated,
        bits_stored=int(values.get("bits_stored", bits_allocated)), frames=int(values.get("frames", 1)),
        encapsulated=bool(ts) and ts not in _NATIVE, checked=True,
        pixel_offset=w.header(pixel_at, explicit, little)[3], ordered=w.ordered)
    _check_layout(s)
    _tag, _vr, length, val = w.header(pixel_at, explicit, little)
    if s.encapsulated:
        if length != _UNDEFINED:
            raise CorruptPixelDataError(f"compressed transfer syntax {ts} but PixelData has a defined length")
        _check_fragments(w, val, s)
        return s
    if length == _UNDEFINED:
        raise CorruptPixelDataError("uncompressed PixelData with an undefined length")
    expected = _expected_bytes(s)
    present = min(length, w.size - val)
    if length > w.size - val:
        raise CorruptPixelDataError(f"pixel data truncated: {present} of {length} bytes present")
    if length not in (expected, expected + 1):
        raise CorruptPixelDataError(
            f"PixelData holds {length} bytes but Rows x Columns x SamplesPerPixel x BitsAllocated/8 x frames = "
            f"{s.rows}x{s.cols}x{s.samples}x{s.bits_allocated // 8}x{s.frames} = {expected}")
    return s
