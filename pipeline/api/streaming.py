"""A zip written straight into the response: no file on disk, never whole in memory.

The same zip as :func:`pipeline.review.export.build_zip` (images stored, as they are compressed
already; ``manifest.csv`` and ``manifest.json`` deflated), written here by hand because
:mod:`zipfile` costs more per member than reading a typical image does: each image is read
whole (up to :data:`WHOLE_BYTES`) straight into the buffer handed to the response, its CRC then
written into its local header ahead of it, so its bytes are copied once between the file and the
socket; a larger file, or an object of a bucket, is copied in pieces and followed by a data
descriptor. The buffer is handed over :data:`FLUSH_BYTES` at a time. ZIP64 records are written
for what passes the classic format's limits (4 GiB, 65,535 entries). When every member is a file
its size is known before the first byte, so the zip's length is too (``Content-Length``: a
progress bar in a browser, and no chunked framing, which copies every piece once more).

An export is usually of images made hours before, no longer in the page cache: the files are
opened :data:`READ_AHEAD_FILES` ahead of their turn and announced to the kernel
(``POSIX_FADV_WILLNEED``), so the disk reads the next ones while this one is checked and sent
(about twice the throughput of reading them one after another from a cold cache; the kernel's
page cache holds them, never this process). The CRC-32 is zlib-ng's when installed (a quarter of
zlib's CPU time, the same checksum).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.errors import ExportError, StorageError
from pipeline.review.export import check_sources, manifest_files
from pipeline.store.objects import LocalStore, ObjectStore

try:  # the same CRC-32 in a quarter of the time (SIMD); zlib's when zlib-ng is not installed
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is in requirements.txt
    from zlib import crc32

FLUSH_BYTES = 1 << 20  # hand over at least this much at a time: few socket writes, in memory the allocator reuses
WHOLE_BYTES = 16 << 20  # a file up to this size is read at once; a larger one is copied in pieces
PIECE_BYTES = 1 << 20
DEFLATE_LEVEL = 1  # the manifests: a tenth of their size at level 1 (a fifteenth at 6), in under half the time
LIMIT32 = 0xFFFFFFFF
UTF8 = 0x0800  # general purpose flag: the name is UTF-8
DESCRIPTOR = 0x0008  # general purpose flag: CRC and sizes follow the data
DESCRIPTOR_BYTES = 24  # a ZIP64 data descriptor: signature, CRC, two 8-byte sizes
MADE_BY = (3 << 8) | 45  # Unix, spec 4.5 (as zipfile writes)
FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--
READ_AHEAD_FILES = 32  # files opened and announced to the kernel before their turn
READ_AHEAD_BYTES = 16 << 20  # and at most this much of them ahead
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows only
ZIP64_OVER = LIMIT32  # sizes and offsets from which ZIP64 fields are written (a test lowers it)
PLAIN_STOPS = frozenset(("", ".", ".."))  # key parts that store.local_path would rewrite or refuse


@dataclass(frozen=True)
class Source:
    """One member to write: a file (``path``) or an object of a bucket (``store`` + ``key``)."""

    name: str
    path: str | None
    store: ObjectStore | None = None
    key: str = ""
    size: int | None = None  # a file's size when the export began (the zip's length is worked out from it)


def sources(rows: list[dict[str, Any]]) -> list[Source]:
    """What to write for ``rows``, checked before a byte is sent (a missing image is an
    :class:`ExportError` naming it, as for the dashboard's export)."""
    out, ask = [], False
    roots: dict[int, str | None] = {}
    for row in rows:
        store: ObjectStore = row["_store"]
        key = row["_key"]
        if id(store) not in roots:
            roots[id(store)] = _plain_root(store)
        root = roots[id(store)]
        if root is not None and _plain(key):
            text: str | None = root + key  # what store.local_path(key) says, without two Path objects per image
        else:
            path = store.local_path(key)
            text = os.fspath(path) if path is not None else None
        size = _file_size(text) if text is not None else None
        if size is None:
            ask = True  # a bucket's object, or a missing file: the dashboard's check lists and names them
        out.append(Source(row["file"], text, None if text else store, key, size))
    if ask:
        check_sources(rows)
    return out


def _file_size(path: str) -> int | None:
    """The size of the regular file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _plain_root(store: ObjectStore) -> str | None:
    """A folder store's absolute root with a ``/`` after it, when its paths are that and the key (POSIX)."""
    if isinstance(store, LocalStore) and os.sep == "/" and store.root.is_absolute():
        return os.fspath(store.root).rstrip("/") + "/"
    return None


def _plain(key: str) -> bool:
    """A key that :func:`clean_key` keeps as it is: relative, no ``\\``, no empty, ``.`` or ``..`` part."""
    return bool(key) and key[0] != "/" and "\\" not in key and not PLAIN_STOPS.intersection(key.split("/"))


def _dos_time(at: float | datetime) -> tuple[int, int]:
    t = time.localtime(at) if isinstance(at, float) else at.timetuple()
    year = max(1980, t.tm_year)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


@dataclass
class _Entry:
    name: bytes
    method: int
    flags: int
    dos_time: int
    dos_date: int
    crc: int
    compressed: int
    size: int
    offset: int
    needed: int = 20  # 45 with ZIP64 fields


@dataclass(frozen=True)
class Packed:
    """A small member made ready once (CRC, deflated body), so a sizing writer and the real one add the same bytes."""

    data_size: int
    crc: int
    body: bytes
    method: int

    @classmethod
    def of(cls, data: bytes, *, deflate: bool = False) -> Packed:
        body = data
        if deflate:
            packer = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
            body = packer.compress(data) + packer.flush()
        return cls(len(data), crc32(data), body, 8 if deflate else 0)


class ZipWriter:
    """Members written one after another into a buffer that :meth:`take` hands over; :meth:`finish`
    adds the directory. A whole file is read straight into the buffer (:meth:`add_file`): its bytes
    are copied once on their way from the file to the socket.

    ``zip64_over`` is the size or offset from which ZIP64 fields are used (a test lowers it). A
    ``sizing`` writer keeps no bytes: fed the same members (:meth:`reserve_file` for a file), its
    :attr:`offset` after :meth:`finish` is the zip's length, sent as ``Content-Length``.
    """

    def __init__(self, zip64_over: int = LIMIT32, *, sizing: bool = False) -> None:
        self._buf = bytearray()
        self.pending = 0  # bytes of the buffer not handed over yet
        self.offset = 0
        self.entries: list[_Entry] = []
        self.zip64_over = zip64_over
        self.sizing = sizing

    def _reserve(self, n: int) -> int:
        """Room for ``n`` more bytes in the buffer; returns where they start."""
        at = self.pending
        if at + n > len(self._buf):  # a new buffer (never resized in place: the socket may still hold the last one)
            grown = bytearray(max(FLUSH_BYTES + (FLUSH_BYTES >> 3), at + n))
            grown[:at] = self._buf[:at]
            self._buf = grown
        return at

    def fits_file(self, name: str, size: int) -> bool:
        """Whether :meth:`add_file` of ``size`` bytes fits the buffer without copying what it holds."""
        entry, extra = self._whole_entry(name, 0, 0.0, 0, size, size)
        return self.pending + len(self._header(entry, extra)) + size <= len(self._buf)

    def _put(self, data: bytes | memoryview) -> None:
        n = len(data)
        if not self.sizing:
            at = self._reserve(n)
            self._buf[at:at + n] = data
            self.pending += n
        self.offset += n

    def take(self) -> memoryview:
        """What the buffer holds, handed over (the writer starts a new buffer)."""
        data = memoryview(self._buf)[:self.pending]
        self._buf, self.pending = bytearray(), 0
        return data

    def _whole_entry(self, name: str, method: int, at: float | datetime, crc: int, compressed: int, size: int) -> tuple[_Entry, bytes]:
        entry = _Entry(name.encode(), method, UTF8, *_dos_time(at), crc, compressed, size, self.offset)
        big = size >= self.zip64_over or compressed >= self.zip64_over
        entry.needed = 45 if big else 20
        extra = struct.pack("<HHQQ", 1, 16, size, compressed) if big else b""
        return entry, extra

    def add_bytes(self, name: str, data: bytes | Packed, *, at: float | datetime, deflate: bool = False) -> None:
        """A whole member from memory: its CRC and sizes in its local header."""
        packed = data if isinstance(data, Packed) else Packed.of(data, deflate=deflate)
        entry, extra = self._whole_entry(name, packed.method, at, packed.crc, len(packed.body), packed.data_size)
        self._put(self._header(entry, extra))
        self._put(packed.body)
        self.entries.append(entry)

    def add_file(self, name: str, f: io.FileIO, size: int, *, at: float | datetime) -> None:
        """A whole member of ``size`` bytes read from ``f`` straight into the buffer, its CRC then
        written into the local header before it. :class:`ExportError` if the file is shorter."""
        entry, extra = self._whole_entry(name, 0, at, 0, size, size)
        header_size = len(self._header(entry, extra))  # the same length once its CRC is in
        start = self._reserve(header_size + size)
        with memoryview(self._buf) as buf, buf[start + header_size:start + header_size + size] as body:
            got = 0
            while got < size:
                n = f.readinto(body[got:])
                if not n:
                    raise ExportError(f"{name}: its file is {got:,} bytes, not the {size:,} it had when the export began")
                got += n
            entry.crc = crc32(body)
            buf[start:start + header_size] = self._header(entry, extra)
        self.pending += header_size + size
        self.offset += header_size + size
        self.entries.append(entry)

    def reserve_file(self, name: str, size: int, *, at: float | datetime) -> None:
        """Account a member of ``size`` bytes as :meth:`add_file` (or, over :data:`WHOLE_BYTES`,
        :meth:`add_pieces`) writes it (a sizing writer)."""
        if size > WHOLE_BYTES:
            entry = self._pieces_entry(name, at)
            self.offset += size + DESCRIPTOR_BYTES
            entry.crc, entry.size, entry.compressed = 0, size, size
        else:
            entry, extra = self._whole_entry(name, 0, at, 0, size, size)
            self._put(self._header(entry, extra))
            self.offset += size
        self.entries.append(entry)

    def _pieces_entry(self, name: str, at: float | datetime) -> _Entry:
        entry = _Entry(name.encode(), 0, UTF8 | DESCRIPTOR, *_dos_time(at), 0, 0, 0, self.offset, 45)
        extra = struct.pack("<HHQQ", 1, 16, 0, 0)  # sizes follow the data, in 8 bytes each
        self._put(self._header(entry, extra))
        return entry

    def add_pieces(self, name: str, pieces: Iterator[bytes], *, at: float | datetime, size: int | None = None) -> Iterator[None]:
        """A member copied in pieces (stored), followed by a ZIP64 data descriptor; yields when
        :attr:`pending` reaches :data:`FLUSH_BYTES`. With ``size``, anything else is an :class:`ExportError`."""
        entry = self._pieces_entry(name, at)
        crc = copied = 0
        for piece in pieces:
            crc = crc32(piece, crc)
            copied += len(piece)
            if size is not None and copied > size:
                raise ExportError(f"{name}: its file grew past the {size:,} bytes it had when the export began")
            self._put(piece)
            if self.pending >= FLUSH_BYTES:
                yield None
        if size is not None and copied != size:
            raise ExportError(f"{name}: its file is {copied:,} bytes, not the {size:,} it had when the export began")
        entry.crc, entry.size, entry.compressed = crc, copied, copied
        self._put(struct.pack("<IIQQ", 0x08074B50, crc, copied, copied))
        self.entries.append(entry)

    def _header(self, e: _Entry, extra: bytes) -> bytes:
        """The local header (with ``extra``, ZIP64 sizes, the sizes in it are 0xFFFFFFFF)."""
        sizes = (LIMIT32, LIMIT32) if extra else (e.compressed, e.size)
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if extra else 20, e.flags, e.method, e.dos_time, e.dos_date,
                           0 if e.flags & DESCRIPTOR else e.crc, *sizes, len(e.name), len(extra)) + e.name + extra

    def finish(self) -> None:
        """The central directory and its end records (ZIP64 ones when needed)."""
        start = self.offset
        limit = self.zip64_over
        for e in self.entries:
            wide = [v for v in (e.size, e.compressed, e.offset) if v >= limit]
            extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
            self._put(struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, MADE_BY, 45 if wide else e.needed, e.flags, e.method, e.dos_time, e.dos_date, e.crc,
                LIMIT32 if e.compressed >= limit else e.compressed, LIMIT32 if e.size >= limit else e.size, len(e.name), len(extra),
                0, 0, 0, FILE_MODE, LIMIT32 if e.offset >= limit else e.offset) + e.name + extra)
        size, count = self.offset - start, len(self.entries)
        if count >= 0xFFFF or size >= limit or start >= limit:
            end64 = self.offset
            self._put(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, MADE_BY, 45, 0, 0, count, count, size, start))
            self._put(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        self._put(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), min(size, LIMIT32),
                              min(start, LIMIT32), 0))


class _ReadAhead:
    """The members' files opened in order, up to :data:`READ_AHEAD_FILES` (and
    :data:`READ_AHEAD_BYTES`) ahead of the one being written, each announced to the kernel as
    soon as it is open, so a cold file is on its way from the disk before its turn."""

    def __init__(self, members: list[Source]) -> None:
        self._members = members
        self._next = 0  # the next member to open
        self._open: deque[tuple[int, int, os.stat_result]] = deque()  # (member index, descriptor, its stat)
        self._bytes = 0

    def take(self, index: int) -> tuple[int, os.stat_result]:
        """Member ``index``'s file, open (the caller closes the descriptor), and its stat."""
        while self._next <= index or (self._next < len(self._members) and len(self._open) < READ_AHEAD_FILES
                                      and self._bytes < READ_AHEAD_BYTES):
            self._open_next()
        at, fd, st = self._open.popleft()
        assert at == index, (at, index)
        self._bytes -= min(st.st_size, WHOLE_BYTES)
        return fd, st

    def _open_next(self) -> None:
        index, self._next = self._next, self._next + 1
        path = self._members[index].path
        if path is None:  # an object of a bucket: not a file
            return
        fd = os.open(path, OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            _announce(fd, min(st.st_size, WHOLE_BYTES))
        except BaseException:
            os.close(fd)
            raise
        self._open.append((index, fd, st))
        self._bytes += min(st.st_size, WHOLE_BYTES)

    def close(self) -> None:
        while self._open:
            os.close(self._open.popleft()[1])


def _announce(fd: int, size: int) -> None:
    """Ask the kernel to read ``size`` bytes of the file into the page cache now (a hint: where
    there is no ``posix_fadvise``, or the file system refuses it, the file is read in its turn)."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def _file_pieces(path: str) -> Iterator[bytes]:
    yield from _pieces(open(path, "rb", buffering=0))


def _pieces(f: io.FileIO) -> Iterator[bytes]:
    with f:
        while piece := f.read(PIECE_BYTES):
            yield piece


@dataclass(frozen=True)
class ZipBody:
    """An export's zip: its bytes in pieces, and its length when every member is a file (then sent as
    ``Content-Length``, so a browser shows the download's progress and the server sends the pieces
    as they are; a bucket's objects are not asked for their sizes first, and the zip is chunked)."""

    pieces: Iterator[memoryview]
    length: int | None


def zip_body(rows: list[dict[str, Any]], members: list[Source], run_ids: list[int], selection: str, **header: Any) -> ZipBody:
    """``members`` (from :func:`sources`), then the manifests, in pieces of about :data:`FLUSH_BYTES`.
    A file that changed size since :func:`sources` looked ends the zip with an :class:`ExportError`."""
    now = time.time()
    manifests = {name: Packed.of(text.encode(), deflate=True) for name, text in manifest_files(rows, run_ids, selection, **header).items()}
    length = None
    if all(m.size is not None for m in members):
        sizer = ZipWriter(ZIP64_OVER, sizing=True)
        for m in members:
            sizer.reserve_file(m.name, m.size or 0, at=now)
        for name, packed in manifests.items():
            sizer.add_bytes(name, packed, at=now)
        sizer.finish()
        length = sizer.offset
    return ZipBody(_zip_pieces(members, manifests, now), length)


def _zip_pieces(members: list[Source], manifests: dict[str, Packed], now: float) -> Iterator[memoryview]:
    z = ZipWriter(ZIP64_OVER)
    ahead = _ReadAhead(members)
    try:
        for index, m in enumerate(members):
            if m.path is not None:
                fd, st = ahead.take(index)
                with open(fd, "rb", buffering=0) as f:
                    size = st.st_size if m.size is None else m.size
                    if st.st_size != size:
                        raise ExportError(f"{m.name}: its file changed while it was being exported ({st.st_size:,} bytes, "
                                          f"{size:,} when the export began)")
                    if size <= WHOLE_BYTES:
                        if z.pending and not z.fits_file(m.name, size):
                            yield z.take()  # rather than copying what the buffer holds into a larger one
                        z.add_file(m.name, f, size, at=st.st_mtime)
                    else:
                        yield from _drain(z, z.add_pieces(m.name, _pieces(f), at=st.st_mtime, size=size))
            else:
                assert m.store is not None
                yield from _drain(z, _object(z, m))
            if z.pending >= FLUSH_BYTES:
                yield z.take()
    finally:
        ahead.close()
    for name, packed in manifests.items():
        z.add_bytes(name, packed, at=now)
    z.finish()
    yield z.take()


def _drain(z: ZipWriter, steps: Iterator[None]) -> Iterator[memoryview]:
    for _ in steps:
        yield z.take()


def _object(z: ZipWriter, m: Source) -> Iterator[None]:
    store = m.store
    assert store is not None
    try:
        found = store.info(m.key)
        if found is None:
            raise ExportError(f"{store.where(m.key)} is missing from the bucket")
        yield from z.add_pieces(m.name, store.chunks(m.key), at=found.modified)
    except StorageError as e:
        raise ExportError(f"{m.name}: {e}") from None

