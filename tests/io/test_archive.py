"""Tests for stdiff.io.archive.extract_archive: layouts, content-hash cache, unsafe entries and caps."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import stdiff.io.archive as archive_module
from _visium_writer import BARCODES, write_sample
from stdiff import settings
from stdiff.io import read_visium
from stdiff.io.archive import ArchiveError, extract_archive


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def make_zip(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def make_tar_gz(entries: dict[str, bytes], *, links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """Return a .tar.gz of ``entries``; ``links`` maps a name to (tar type, link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a small Space Ranger outs folder, keyed by path relative to it."""
    return _files(write_sample(tmp_path_factory.mktemp("written") / "outs", counts="mtx-gz", fullres=None))


def _prefixed(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{name}": data for name, data in files.items()}


def test_zip_of_outs_files(sample_files, tmp_path):
    folder = extract_archive(make_zip(sample_files), tmp_path / "cache", name="patient-9.zip")
    adata = read_visium(folder)

    assert folder.name == "patient-9"
    assert folder.parent.name == archive_module.hashlib.sha256(make_zip(sample_files)).hexdigest()
    assert adata.obs_names.tolist() == BARCODES
    assert list(adata.uns["spatial"]) == ["patient-9"]


def test_tar_gz_nested_one_level(sample_files, tmp_path):
    data = make_tar_gz(_prefixed(sample_files, "lung-A/outs"))
    archive_path = tmp_path / "upload.tar.gz"
    archive_path.write_bytes(data)

    folder = extract_archive(archive_path, tmp_path / "cache")

    assert folder.name == "lung-A"
    assert list(read_visium(folder).uns["spatial"]) == ["lung-A"]
    assert _files(folder / "outs") == sample_files


def test_outs_folder_at_top(sample_files, tmp_path):
    folder = extract_archive(make_zip(_prefixed(sample_files, "outs")), tmp_path / "cache", name="s1.zip")

    assert (folder / "outs" / "spatial").is_dir()
    assert list(read_visium(folder).uns["spatial"]) == ["s1"]


def test_macos_metadata_skipped(sample_files, tmp_path):
    entries = {**sample_files, "__MACOSX/spatial/._tissue_positions.csv": b"\x00", ".DS_Store": b"\x00"}

    folder = extract_archive(make_zip(entries), tmp_path / "cache")

    assert not (folder / "__MACOSX").exists()
    assert not (folder / ".DS_Store").exists()


def test_cached_by_content(sample_files, tmp_path, monkeypatch):
    data = make_zip(sample_files)
    first = extract_archive(data, tmp_path / "cache", name="a.zip")

    def fail(*args, **kwargs):
        raise AssertionError("unpacked again")

    monkeypatch.setattr(archive_module, "_unpack", fail)
    second = extract_archive(io.BytesIO(data), tmp_path / "cache", name="b.zip")

    assert second == first
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_default_root_is_cache_dir(sample_files, tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "stdiff-cache"))

    folder = extract_archive(make_zip(sample_files))

    assert folder.is_relative_to(tmp_path / "stdiff-cache" / "uploads")
    assert settings.uploads_dir() == tmp_path / "stdiff-cache" / "uploads"


UNSAFE = {
    "zip-parent-dir": (lambda files: make_zip({**files, "../escaped.txt": b"x"}), "'../escaped.txt'"),
    "zip-nested-parent-dir": (lambda files: make_zip({**files, "spatial/../../escaped.txt": b"x"}), "outside"),
    "zip-absolute": (lambda files: make_zip({**files, "/tmp/escaped.txt": b"x"}), "'/tmp/escaped.txt'"),
    "zip-backslash": (lambda files: make_zip({**files, "..\\escaped.txt": b"x"}), "outside"),
    "zip-symlink": (lambda files: make_zip(files, symlinks={"spatial/link.png": "/etc/passwd"}), "symbolic link"),
    "tar-parent-dir": (lambda files: make_tar_gz({**files, "../escaped.txt": b"x"}), "'../escaped.txt'"),
    "tar-absolute": (lambda files: make_tar_gz({**files, "/tmp/escaped.txt": b"x"}), "'/tmp/escaped.txt'"),
    "tar-symlink": (lambda files: make_tar_gz(files, links={"spatial/link.png": (tarfile.SYMTYPE, "/etc/passwd")}),
                    "symbolic link"),
    "tar-hardlink": (lambda files: make_tar_gz(files, links={"spatial/link.png": (tarfile.LNKTYPE, "/etc/passwd")}),
                     "hard link"),
    "tar-fifo": (lambda files: make_tar_gz(files, links={"spatial/pipe": (tarfile.FIFOTYPE, "")}), "special file"),
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_unsafe_entry_rejected(name, sample_files, tmp_path):
    make, fragment = UNSAFE[name]
    root = tmp_path / "uploads" / "cache"

    with pytest.raises(ArchiveError, match="rejected") as error:
        extract_archive(make(sample_files), root)

    assert fragment in str(error.value)
    assert list(root.iterdir()) == []
    assert [path.name for path in tmp_path.rglob("escaped.txt")] == []


def test_file_count_cap(sample_files, tmp_path):
    with pytest.raises(ArchiveError) as error:
        extract_archive(make_tar_gz(sample_files), tmp_path / "cache", max_files=3)

    assert "more than 3 entries" in str(error.value)
    assert "STDIFF_UPLOAD_MAX_FILES" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("make", [make_zip, make_tar_gz], ids=["zip", "tar.gz"])
def test_size_cap(make, sample_files, tmp_path):
    entries = {**sample_files, "spatial/padding.bin": bytes(3 * 1024 * 1024)}  # compresses to a few KiB

    with pytest.raises(ArchiveError) as error:
        extract_archive(make(entries), tmp_path / "cache", max_total_bytes=2 * 1024 * 1024)

    assert "more than 2.0 MiB" in str(error.value)
    assert "STDIFF_UPLOAD_MAX_BYTES = 2,097,152 bytes" in str(error.value)
    assert "folder on the server" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_caps_from_environment(sample_files, tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_UPLOAD_MAX_FILES", "4")

    with pytest.raises(ArchiveError, match="more than 4 entries"):
        extract_archive(make_zip(sample_files), tmp_path / "cache")


def test_invalid_cap_setting(monkeypatch):
    monkeypatch.setenv("STDIFF_UPLOAD_MAX_BYTES", "20GB")

    with pytest.raises(ValueError, match="STDIFF_UPLOAD_MAX_BYTES='20GB' is invalid"):
        settings.upload_max_bytes()


def test_default_caps(monkeypatch):
    monkeypatch.delenv("STDIFF_UPLOAD_MAX_BYTES", raising=False)
    monkeypatch.delenv("STDIFF_UPLOAD_MAX_FILES", raising=False)

    assert settings.upload_max_bytes() == 20 * 1024**3
    assert settings.upload_max_files() == 10_000


def test_not_an_archive(tmp_path):
    with pytest.raises(ArchiveError, match="Could not unpack the archive"):
        extract_archive(b"PNG? no, just bytes" * 100, tmp_path / "cache")


def test_truncated_archive(sample_files, tmp_path):
    data = make_tar_gz(sample_files)

    with pytest.raises(ArchiveError, match="truncated"):
        extract_archive(data[: len(data) // 2], tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_archive_without_sample(tmp_path):
    with pytest.raises(ArchiveError, match=r"No Space Ranger sample in the archive; its top level contains \['notes'\]"):
        extract_archive(make_zip({"notes/readme.txt": b"hello"}), tmp_path / "cache")


def test_archive_with_two_samples(sample_files, tmp_path):
    entries = {**_prefixed(sample_files, "a/outs"), **_prefixed(sample_files, "b")}

    with pytest.raises(ArchiveError, match=r"contains 2 samples \(\['a', 'b'\]\)"):
        extract_archive(make_zip(entries), tmp_path / "cache")


def test_missing_archive_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.zip"):
        extract_archive(tmp_path / "absent.zip", tmp_path / "cache")
