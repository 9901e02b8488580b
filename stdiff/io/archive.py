"""Safe unpacking of uploaded sample archives (.zip, .tar.gz, .tgz), cached by content hash.

Every entry is checked before anything is written: absolute names, ``..`` components, symbolic and hard links,
devices and other special files are rejected, and the number of entries and the bytes actually written are
capped. An archive is unpacked into a temporary folder that is renamed into place when complete, so an
interrupted upload never leaves a half-unpacked sample in the cache.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from stdiff import settings
from stdiff.io.geo import arrange_sample, find_flat_samples
from stdiff.io.visium import is_sample_dir
from stdiff.units import format_bytes

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".stdiff-unpacked"
CHUNK_BYTES = 1024 * 1024
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Entries that macOS adds to archives it creates; they are skipped, not unpacked.
MACOS_METADATA = ("__MACOSX", ".DS_Store")
DEFAULT_FOLDER_NAME = "sample"


class ArchiveError(ValueError):
    """An uploaded archive is unreadable, unsafe, too large, or does not contain exactly one Space Ranger sample."""


def _open_source(source: str | Path | bytes | BinaryIO) -> tuple[BinaryIO, str, str | None]:
    """Return a seekable binary stream over ``source``, its SHA-256 hex digest and its file name if known."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), hashlib.sha256(data).hexdigest(), None
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Archive {path} not found. Pass the path of a .zip or .tar.gz file.")
        stream: BinaryIO = path.open("rb")
        name = path.name
    else:
        stream, name = source, getattr(source, "name", None)
    digest = hashlib.sha256()
    stream.seek(0)
    for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
        digest.update(chunk)
    stream.seek(0)
    return stream, digest.hexdigest(), name


def _folder_name(name: str | None) -> str:
    """Return a safe folder name from an archive file name: its stem, without archive suffixes."""
    if not name:
        return DEFAULT_FOLDER_NAME
    stem = PurePosixPath(name.replace("\\", "/")).name
    for suffix in ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or DEFAULT_FOLDER_NAME


class _Limits:
    """Counts entries and bytes written, raising ArchiveError as soon as a cap is passed."""

    def __init__(self, *, max_total_bytes: int, max_files: int) -> None:
        self.max_total_bytes = max_total_bytes
        self.max_files = max_files
        self.entries = 0
        self.total_bytes = 0

    def add_entry(self, count: int = 1) -> None:
        self.entries += count
        if self.entries > self.max_files:
            raise ArchiveError(
                f"The archive contains more than {self.max_files:,} entries, the upload limit (STDIFF_UPLOAD_MAX_FILES)."
                " Remove files the sample does not need (a Space Ranger outs folder has a few dozen), or copy the "
                "sample to a folder on the server and enter that folder in the sidebar."
            )

    def add_bytes(self, count: int) -> None:
        self.total_bytes += count
        if self.total_bytes > self.max_total_bytes:
            raise ArchiveError(
                f"The archive unpacks to more than {format_bytes(self.max_total_bytes)}, the upload limit "
                f"(STDIFF_UPLOAD_MAX_BYTES = {self.max_total_bytes:,} bytes). Copy the sample to a folder on the "
                "server and enter that folder in the sidebar, or raise STDIFF_UPLOAD_MAX_BYTES."
            )


def _safe_relative_path(name: str) -> PurePosixPath | None:
    """Return the entry name as a relative path inside the target, None for macOS metadata; raise if unsafe."""
    normalized = name.replace("\\", "/")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized) or ".." in parts or "\x00" in normalized:
        raise ArchiveError(
            f"The archive entry {name!r} points outside the folder it is unpacked into (an absolute path or a '..' "
            "component). Such archives are rejected; pack the sample folder again with zip or tar from inside "
            "its parent folder."
        )
    if not parts or parts[0] in MACOS_METADATA or parts[-1] in MACOS_METADATA or parts[-1].startswith("._"):
        return None
    return PurePosixPath(*parts)


def _reject_link(name: str, kind: str) -> None:
    raise ArchiveError(
        f"The archive entry {name!r} is a {kind}; archives with links or special files are rejected because they "
        "can point outside the upload folder. Pack the sample again with the files themselves (zip without -y, "
        "tar with --dereference)."
    )


def _write_entry(target: Path, relative: PurePosixPath, stream: BinaryIO, limits: _Limits) -> None:
    path = target.joinpath(*relative.parts)
    if not path.resolve().is_relative_to(target.resolve()):
        raise ArchiveError(f"The archive entry {str(relative)!r} resolves outside the upload folder; rejected.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as output:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            limits.add_bytes(len(chunk))
            output.write(chunk)


def _zip_entries(archive: zipfile.ZipFile) -> Iterator[tuple[str, str, zipfile.ZipInfo]]:
    for info in archive.infolist():
        # Zip files made on Unix store the st_mode in the high 16 bits; other tools leave the file type at 0.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type == stat.S_IFLNK:
            kind = "symbolic link"
        elif info.is_dir():
            kind = "dir"
        elif file_type not in (0, stat.S_IFREG):
            kind = "special file"
        else:
            kind = "file"
        yield info.filename, kind, info


def _unpack_zip(stream: BinaryIO, target: Path, limits: _Limits) -> None:
    with zipfile.ZipFile(stream) as archive:
        # The central directory lists every entry and its size up front, so caps fail before anything is written.
        # Sizes can be forged, so the bytes written are counted again below.
        _Limits(max_total_bytes=limits.max_total_bytes, max_files=limits.max_files).add_entry(len(archive.infolist()))
        _Limits(max_total_bytes=limits.max_total_bytes, max_files=limits.max_files).add_bytes(
            sum(info.file_size for info in archive.infolist())
        )
        for name, kind, info in _zip_entries(archive):
            limits.add_entry()
            if kind in ("symbolic link", "special file"):
                _reject_link(name, kind)
            relative = _safe_relative_path(name)
            if relative is None:
                continue
            if kind == "dir":
                target.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
                continue
            with archive.open(info) as entry:
                _write_entry(target, relative, entry, limits)


def _unpack_tar(stream: BinaryIO, target: Path, limits: _Limits) -> None:
    with tarfile.open(fileobj=stream, mode="r:*") as archive:
        for member in archive:
            limits.add_entry()
            if member.issym() or member.islnk():
                _reject_link(member.name, "symbolic link" if member.issym() else "hard link")
            if not (member.isfile() or member.isdir()):
                _reject_link(member.name, "special file (device, FIFO or similar)")
            relative = _safe_relative_path(member.name)
            if relative is None:
                continue
            if member.isdir():
                target.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
                continue
            entry = archive.extractfile(member)
            if entry is None:
                continue
            with entry:
                _write_entry(target, relative, entry, limits)


def _unpack(stream: BinaryIO, target: Path, limits: _Limits) -> None:
    signature = stream.read(4)
    stream.seek(0)
    try:
        if signature in ZIP_SIGNATURES:
            _unpack_zip(stream, target, limits)
        else:
            _unpack_tar(stream, target, limits)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as error:
        raise ArchiveError(
            f"Could not unpack the archive: {type(error).__name__}: {error}. Expected a complete .zip or .tar.gz "
            "file; it may be truncated (upload it again) or in another format."
        ) from error


def _child_folders(folder: Path) -> list[Path]:
    """Return the subfolders of ``folder`` that may hold a sample: not hidden, not macOS metadata."""
    return [child for child in sorted(folder.iterdir())
            if child.is_dir() and child.name not in MACOS_METADATA and not child.name.startswith(".")]


def find_sample_in(folder: Path) -> Path:
    """Return the Space Ranger sample in ``folder``: the folder itself or the one subfolder that is a sample.

    A sample is a folder where it, or its ``outs/``, contains ``spatial/`` and a count matrix.

    Raises
    ------
    ArchiveError
        When no sample or several samples are found.
    """
    if is_sample_dir(folder):
        return folder
    samples = [child for child in _child_folders(folder) if is_sample_dir(child)]
    if len(samples) == 1:
        return samples[0]
    if samples:
        raise ArchiveError(
            f"The archive contains {len(samples)} samples ({[sample.name for sample in samples]}). Upload one sample "
            "per archive, or copy them to a folder on the server and enter that folder in the sidebar."
        )
    found = sorted(child.name for child in folder.iterdir())[:20]
    raise ArchiveError(
        f"No Space Ranger sample in the archive; its top level contains {found}. Expected a spatial/ folder and "
        "filtered_feature_bc_matrix.h5 (or filtered_feature_bc_matrix/) at the top, in outs/, or one folder "
        "down. Pack the Space Ranger outs folder or the folder containing it."
    )


def extract_archive(
    source: str | Path | bytes | BinaryIO,
    target_root: str | Path | None = None,
    *,
    max_total_bytes: int | None = None,
    max_files: int | None = None,
    name: str | None = None,
) -> Path:
    """Unpack a .zip, .tar.gz or .tgz of a Space Ranger sample and return the sample folder inside it.

    The archive is unpacked into ``target_root/<sha256 of its content>/<name>/``; a later call with the same
    content returns that folder without unpacking again. The sample folder is the unpacked folder itself or
    the one folder below it that contains ``spatial/`` (directly or in ``outs/``).

    Parameters
    ----------
    source
        Archive path, its bytes, or a binary file object (such as a Streamlit ``UploadedFile``).
    target_root
        Cache folder; defaults to :func:`stdiff.settings.uploads_dir`.
    max_total_bytes
        Cap on the bytes written; defaults to :func:`stdiff.settings.upload_max_bytes`.
    max_files
        Cap on the number of entries (files and folders); defaults to :func:`stdiff.settings.upload_max_files`.
    name
        Archive file name, used to name the unpacked folder (and so the library id of a sample without one)
        when ``source`` is not a path.

    Raises
    ------
    ArchiveError
        When the archive is not a readable zip or tar file, contains an unsafe entry (absolute path, ``..``,
        symbolic or hard link, device), passes a cap, or does not contain exactly one sample. Nothing is left in the cache.
    FileNotFoundError
        When ``source`` is a path that does not exist.
    """
    target_root = Path(target_root).expanduser() if target_root is not None else settings.uploads_dir()
    limits = _Limits(
        max_total_bytes=settings.upload_max_bytes() if max_total_bytes is None else int(max_total_bytes),
        max_files=settings.upload_max_files() if max_files is None else int(max_files),
    )
    stream, digest, source_name = _open_source(source)
    cached = target_root / digest
    close_stream = isinstance(source, (str, Path))
    try:
        if (cached / COMPLETE_MARKER).is_file():
            logger.info("Archive %s already unpacked in %s; reusing it.", digest[:12], cached)
            return find_sample_in(_content_folder(cached))

        target_root.mkdir(parents=True, exist_ok=True)
        partial = target_root / f".{digest}.partial-{uuid.uuid4().hex[:8]}"
        content = partial / _folder_name(name or source_name)
        try:
            content.mkdir(parents=True)
            _unpack(stream, content, limits)
            _arrange_flat_upload(content, limits)
            find_sample_in(content)
            (partial / COMPLETE_MARKER).write_text(f"{name or source_name or ''}\n")
            _move_into_place(partial, cached)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        if close_stream:
            stream.close()
    logger.info("Unpacked %d entries (%s) into %s.", limits.entries, format_bytes(limits.total_bytes), cached)
    return find_sample_in(_content_folder(cached))


def _arrange_flat_upload(content: Path, limits: _Limits) -> None:
    """Turn an upload of one sample's GEO files, all in one folder, into a Space Ranger folder inside ``content``.

    The files are arranged beside ``content`` first, then replace its contents, so that a folder in the archive
    named like the sample does not get in the way. Unpacking the gzipped files counts against ``limits``.
    """
    folders = [content, *_child_folders(content)]
    if any(is_sample_dir(folder) for folder in folders):
        return
    samples = [sample for folder in folders for sample in find_flat_samples(folder).values() if not sample.missing()]
    if not samples:
        return
    if len(samples) > 1:
        raise ArchiveError(
            f"The archive contains the GEO files of {len(samples)} samples ({[sample.name for sample in samples]}). "
            "Upload one sample per archive, or unpack it on the server, run `stdiff arrange-geo FOLDER --out "
            "DATA_FOLDER` and enter DATA_FOLDER in the sidebar."
        )
    staging = content.parent / ".geo"
    try:
        arranged = arrange_sample(samples[0], staging, on_bytes=limits.add_bytes)
    except ArchiveError:
        raise
    except ValueError as error:
        raise ArchiveError(f"Cannot arrange the GEO files in the archive: {error}") from error
    shutil.rmtree(content)
    content.mkdir()
    os.replace(arranged, content / arranged.name)
    shutil.rmtree(staging)


def _content_folder(cached: Path) -> Path:
    folders = [child for child in cached.iterdir() if child.is_dir()]
    if len(folders) != 1:
        raise ArchiveError(f"The upload cache folder {cached} is damaged; delete it and upload the archive again.")
    return folders[0]


def _move_into_place(partial: Path, cached: Path) -> None:
    try:
        os.replace(partial, cached)
    except OSError:
        if (cached / COMPLETE_MARKER).is_file():
            # Another session unpacked the same archive first; keep its copy.
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(partial, cached)
