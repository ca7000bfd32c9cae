"""Prompt sets with their images: a zip bundle, a folder, or a JSON file next to its images.

A bundle holds one prompt-set JSON at its root (``prompts.json``, or the only ``.json`` there)
and the images its ``reference_images`` name, by paths relative to the root. Reading one only
reads: every problem is a :class:`PromptSetInvalid` naming the JSON path of the field concerned
(or the bundle member, for a member nothing names), and nothing is written anywhere.

Refused: a member or reference outside the bundle (absolute, ``..``), a symbolic link (a zip
records one in its external attributes), a file that Pillow does not read as an image, a
decompression bomb (a member unpacked more than ``bundle_max_ratio`` times its packed size, an
image over ``[images] max_pixels``), and bundles over ``bundle_max_bytes`` or
``bundle_max_files``. Sizes declared in a zip's headers are not trusted: reads are capped.
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from pipeline.config import Settings
from pipeline.display import shown
from pipeline.errors import BadImage, Problem, PromptSetInvalid
from pipeline.images import inspect_image
from pipeline.prompts.promptset import Limits, PromptSetSpec, load_file, parse_bytes
from pipeline.prompts.references import ReferenceSpec, normalized
from pipeline.prompts.references import _path_problem as path_problem

PREFERRED_JSON = "prompts.json"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class BundleLimits:
    max_bytes: int  # everything read from the bundle
    max_files: int
    max_ratio: int
    reference_max_bytes: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "BundleLimits":
        p = settings.promptset
        return cls(max_bytes=p.bundle_max_bytes, max_files=p.bundle_max_files, max_ratio=p.bundle_max_ratio,
                   reference_max_bytes=p.reference_max_bytes, max_pixels=settings.images.max_pixels)


class _Refused(Exception):
    """One problem with one member; becomes a :class:`Problem` at the field that named it."""


Opener = Callable[[], AbstractContextManager[IO[bytes]]]  # opens the zip afresh (a file) or again (an upload)


class _Source:
    """The files of a bundle: ``names`` (regular files, normalized paths), ``bad`` (members that
    must not be read, with why: a link, a bomb) and ``read(name, cap)``; ``reader`` reads one
    again later (at launch), so that no image's bytes need be held until then."""

    label: str
    names: dict[str, int]  # path -> declared size (a folder lists only its top level: the JSON)
    bad: dict[str, str]

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str, cap: int) -> bytes:
        raise NotImplementedError

    def reader(self, name: str, cap: int) -> Callable[[], bytes]:
        raise NotImplementedError


class _ZipSource(_Source):
    def __init__(self, archive: zipfile.ZipFile, opener: Opener, label: str, limits: BundleLimits) -> None:
        self.archive, self.opener, self.label, self.limits = archive, opener, label, limits
        self.names, self.members, self.bad = {}, {}, {}
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise PromptSetInvalid([Problem("", f"the bundle has {len(infos):,} files, over the limit of {limits.max_files:,}")], label)
        problems: list[Problem] = []
        for info in infos:
            raw_name = info.filename
            what = f'bundle member "{shown(raw_name, 200)}"'
            why = path_problem(raw_name.rstrip("/"))
            if why:
                problems.append(Problem("", f"{what}: {why}"))
                continue
            name = normalized(raw_name)
            if stat.S_ISLNK(info.external_attr >> 16):
                self.bad[name] = "is a symbolic link; a bundle holds only regular files"
                continue
            if info.is_dir():
                continue
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                self.bad[name] = (f"unpacks {info.file_size / info.compress_size:,.0f} times its packed size, over "
                                  f"{limits.max_ratio}: refused as a possible decompression bomb")
                continue
            self.names[name] = info.file_size
            self.members[name] = info
        self._enter_single_folder()
        declared = sum(self.names.values())
        if declared > limits.max_bytes:
            problems.append(Problem("", f"the bundle unpacks to {declared:,} bytes, over the limit of {limits.max_bytes:,}"))
        if problems:
            raise PromptSetInvalid(problems, label)

    def _enter_single_folder(self) -> None:
        """A zip of a folder (``story/prompts.json``, ``story/faces/…``): that folder is the bundle's root."""
        names = list(self.names) + list(self.bad)
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1 or any("/" not in n for n in names):
            return
        cut = len(tops.pop()) + 1
        self.names = {n[cut:]: size for n, size in self.names.items()}
        self.members = {n[cut:]: info for n, info in self.members.items()}
        self.bad = {n[cut:]: why for n, why in self.bad.items()}

    def read(self, name: str, cap: int) -> bytes:
        info = self.members[name]
        with self.archive.open(info) as f:
            return _capped(f, cap, info.compress_size, self.limits.max_ratio)

    def reader(self, name: str, cap: int) -> Callable[[], bytes]:
        opener, member, ratio = self.opener, self.members[name].filename, self.limits.max_ratio

        def read_again() -> bytes:
            with opener() as f, zipfile.ZipFile(f) as archive:
                info = archive.getinfo(member)
                with archive.open(info) as m:
                    return _capped(m, cap, info.compress_size, ratio)

        return read_again


class _FolderSource(_Source):
    """A folder: only the files the JSON names are looked at (no walk of what else is there)."""

    def __init__(self, root: Path, label: str) -> None:
        self.root, self.label = root, label
        self.bad = {}
        self.names = {p.name: 0 for p in root.iterdir() if p.suffix.lower() == ".json" and p.is_file() and not p.is_symlink()}

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read(self, name: str, cap: int) -> bytes:
        with (self.root / name).open("rb") as f:
            return _capped(f, cap, 0, 0)

    def reader(self, name: str, cap: int) -> Callable[[], bytes]:
        return lambda: self.read(name, cap)

    def link(self, name: str) -> bool:
        """Whether ``name`` or a folder on its way is a symbolic link."""
        path = self.root
        for part in name.split("/"):
            path = path / part
            if path.is_symlink():
                return True
        return False


def _capped(f: IO[bytes], cap: int, packed: int, max_ratio: int) -> bytes:
    """At most ``cap`` bytes of ``f``; more is an error (a zip header may lie about the size)."""
    data = f.read(cap + 1)
    if len(data) > cap:
        raise _Refused(f"is over the limit of {cap:,} bytes")
    if packed and max_ratio and len(data) / packed > max_ratio:
        raise _Refused(f"unpacks {len(data) / packed:,.0f} times its packed size: refused as a possible decompression bomb")
    return data


def _json_member(source: _Source) -> str:
    top = sorted(n for n in source.names if "/" not in n and n.lower().endswith(".json"))
    if PREFERRED_JSON in top:
        return PREFERRED_JSON
    if len(top) == 1:
        return top[0]
    found = ", ".join(top) if top else "none"
    raise PromptSetInvalid([Problem("", f'the bundle needs one prompt-set JSON at its root (or one named "{PREFERRED_JSON}"); '
                                        f"found: {found}")], source.label)


def _load(source: _Source, limits: Limits, bundle: BundleLimits) -> PromptSetSpec:
    name = _json_member(source)
    if name in source.bad:
        raise PromptSetInvalid([Problem("", f"{name} {source.bad[name]}")], source.label)
    try:
        raw = source.read(name, limits.max_bytes)
    except _Refused as e:
        raise PromptSetInvalid([Problem("", f"{name} {e}")], source.label) from None
    spec = parse_bytes(raw, limits, source=source.label)
    return _with_images(spec, source, bundle, raw)


@dataclass(frozen=True)
class _Checked:
    mime_type: str
    sha256: str
    byte_size: int
    reader: Callable[[], bytes]


def _with_images(spec: PromptSetSpec, source: _Source, bundle: BundleLimits, raw_json: bytes) -> PromptSetSpec:
    """``spec`` with every reference read from ``source`` once, checked as an image, and given
    its type, hash and a way to read it again (its bytes are not kept)."""
    problems: list[Problem] = []
    checked: dict[str, _Checked | None] = {}
    total = len(raw_json)
    for ref in spec.references():
        if ref.path in checked:
            continue
        checked[ref.path] = None
        try:
            data = _read_reference(source, ref.path, bundle)
            total += len(data)
            if total > bundle.max_bytes:
                raise _Refused(f"takes the bundle past its limit of {bundle.max_bytes:,} bytes read")
            info = inspect_image(data, max_pixels=bundle.max_pixels)
        except _Refused as e:
            problems.append(Problem(ref.where, f'"{shown(ref.path, 200)}" {e}'))
            continue
        except BadImage as e:
            problems.append(Problem(ref.where, f'"{shown(ref.path, 200)}" is not an image we can use: {e}'))
            continue
        checked[ref.path] = _Checked(info.mime_type, info.sha256, len(data),
                                     _guarded(source.reader(ref.path, bundle.reference_max_bytes), ref, source.label))
        del data
    # A hostile member nothing names is refused too (it says what made the bundle).
    problems.extend(Problem("", f'bundle member "{shown(name, 200)}" {why}') for name, why in sorted(source.bad.items())
                    if name not in checked)
    if problems:
        raise PromptSetInvalid(problems, source.label)

    def filled(ref: ReferenceSpec) -> ReferenceSpec:
        got = checked[ref.path]
        assert got is not None  # every problem was raised above
        return replace(ref, mime_type=got.mime_type, sha256=got.sha256, byte_size=got.byte_size, reader=got.reader)

    characters = {c.id: replace(c, references=tuple(filled(r) for r in c.references)) for c in spec.characters}
    prompts = tuple(replace(p, references=tuple(filled(r) for r in p.references),
                            characters=tuple(characters[c.id] for c in p.characters)) for p in spec.prompts)
    digest = hashlib.sha256(raw_json)
    for path in sorted(checked):
        got = checked[path]
        digest.update(f"\0{path}\0{got.sha256 if got else ''}".encode())
    return replace(spec, prompts=prompts, characters=tuple(characters.values()), sha256=digest.hexdigest())


def _guarded(read: Callable[[], bytes], ref: ReferenceSpec, label: str) -> Callable[[], bytes]:
    """``read``, its failures (the bundle moved or changed since) worded with the reference's JSON path."""
    def read_again() -> bytes:
        try:
            return read()
        except (OSError, zipfile.BadZipFile, KeyError, _Refused) as e:
            raise PromptSetInvalid([Problem(ref.where, f'"{shown(ref.path, 200)}" can no longer be read from the bundle: '
                                                       f"{shown(str(e), 200)}; load the prompt set again")], label) from None
    return read_again


def _read_reference(source: _Source, path: str, bundle: BundleLimits) -> bytes:
    if isinstance(source, _FolderSource) and source.link(path):
        raise _Refused("is a symbolic link; a bundle holds only regular files")
    if path in source.bad:
        raise _Refused(source.bad[path])
    if not source.has(path):
        raise _Refused("is not in the bundle")
    return source.read(path, bundle.reference_max_bytes)


def load_zip(data: IO[bytes] | Opener, label: str, limits: Limits, bundle: BundleLimits) -> PromptSetSpec:
    """A zip bundle: ``data`` a seekable file (kept open by the caller until the launch) or
    ``opener()`` that opens it, now and again when its images are stored."""
    opener = data if callable(data) else _rewound(data)
    try:
        with opener() as f, zipfile.ZipFile(f) as archive:
            return _load(_ZipSource(archive, opener, label, bundle), limits, bundle)
    except zipfile.BadZipFile as e:  # not a zip at all, or a member whose bytes do not match its header (CRC, size)
        what = "not a zip file" if "not a zip file" in str(e).lower() else "the zip is damaged"
        raise PromptSetInvalid([Problem("", f"{what} ({shown(str(e), 200)})")], label) from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        raise PromptSetInvalid([Problem("", f"not a zip file we can read ({shown(str(e), 200)})")], label) from None
    except OSError as e:  # a member that fails its CRC, or a read error
        raise PromptSetInvalid([Problem("", f"the zip cannot be read: {shown(str(e), 200)}")], label) from None


def _rewound(f: IO[bytes]) -> Opener:
    """An opener of the caller's open file: rewound each time, left open (it is the caller's)."""
    def reopen() -> AbstractContextManager[IO[bytes]]:
        f.seek(0)
        return nullcontext(f)
    return reopen


def load_source(path: Path, limits: Limits, bundle: BundleLimits) -> PromptSetSpec:
    """A prompt set from the command line: a ``.json`` (its images beside it), a ``.zip``, or a folder."""
    label = shown(str(path), 4096)
    if path.is_dir():
        return _load(_FolderSource(path, label), limits, bundle)
    if path.suffix.lower() == ".zip" or _starts_with_zip(path):
        return load_zip(lambda: path.open("rb"), label, limits, bundle)
    spec = load_file(path, limits)
    if not spec.references():
        return spec
    raw = path.read_bytes()
    return _with_images(spec, _FolderSource(path.parent, label), bundle, raw)


def _starts_with_zip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ZIP_MAGIC
    except OSError:
        return False


def load_upload(raw: bytes, name: str, limits: Limits, bundle: BundleLimits) -> PromptSetSpec:
    """An uploaded prompt set: a zip bundle, or JSON (which then cannot name images)."""
    if raw.startswith(ZIP_MAGIC) or name.lower().endswith(".zip"):
        return load_zip(lambda: io.BytesIO(raw), name, limits, bundle)
    spec = parse_bytes(raw, limits, source=name)
    refs = spec.references()
    if refs:
        raise PromptSetInvalid([Problem(r.where, f'"{shown(r.path, 200)}": a JSON upload carries no images; upload a zip bundle '
                                                 "of the JSON and its images") for r in refs[:20]], name)
    return spec

