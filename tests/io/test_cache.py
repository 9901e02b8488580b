"""Tests for the cache folder: listing and clearing uploads, tiles and reconstructions (stdiff.cache, `stdiff cache`)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from _visium_writer import write_sample
from stdiff.cache import cache_entries, clear_cache
from stdiff.cli import main
from stdiff.io import open_tissue_image, read_visium
from stdiff.io.archive import extract_archive
from stdiff.tiles import TilePyramid


def _tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    return buffer.getvalue()


def _files_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _make_old(path: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    for child in [path, *path.rglob("*")]:
        os.utime(child, (stamp, stamp), follow_symlinks=False)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder filled the way the app fills it: an unpacked upload, the tiles of its image, a
    reconstruction file and downloaded TAEF2 weights."""
    root = tmp_path / "cache"
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(root))
    sample = write_sample(tmp_path / "written" / "outs")
    folder = extract_archive(_tar_gz(sample), name="outs.tar.gz")
    pyramid = TilePyramid(open_tissue_image(read_visium(folder)), root / "tiles")
    pyramid.tile(0, 0, 0)
    pyramid.tile(pyramid.n_levels - 1, 0, 0)
    (root / "reconstructions").mkdir()
    np.savez(root / "reconstructions" / "outs-0123456789abcdef.npz", expression=np.ones((5, 3), np.float32))
    (root / "taef2").mkdir()
    (root / "taef2" / "taef2_decoder.pth").write_bytes(b"\0" * 1000)
    return root


def test_entries_list_part_sizes(cache):
    entries = cache_entries()

    by_part = {part: [entry for entry in entries if entry.part == part]
               for part in ("uploads", "tiles", "reconstructions", "taef2")}
    assert [len(found) for found in by_part.values()] == [1, 1, 1, 1]
    assert by_part["uploads"][0].size_bytes == _files_size(cache / "uploads")
    assert by_part["tiles"][0].size_bytes == _files_size(cache / "tiles") > 0


def test_clear_keeps_weights_by_default(cache):
    removed, failed = clear_cache()

    assert sorted(entry.part for entry in removed) == ["reconstructions", "tiles", "uploads"]
    assert failed == {}
    assert [path.name for path in cache.rglob("*") if path.is_file()] == ["taef2_decoder.pth"]


def test_clear_older_than_keeps_recent(cache):
    _make_old(next((cache / "tiles").iterdir()), days=40)

    removed, failed = clear_cache(older_than_days=30)

    assert [entry.part for entry in removed] == ["tiles"]
    assert len(cache_entries(["uploads", "reconstructions"])) == 2


def test_reupload_after_clear(cache, tmp_path):
    clear_cache(["uploads"])

    folder = extract_archive(_tar_gz(tmp_path / "written" / "outs"), name="outs.tar.gz")

    assert read_visium(folder).n_obs > 0


def test_clear_keeps_sample_in_use(cache):
    upload = next((cache / "uploads").iterdir())
    in_use = next(path for path in upload.rglob("spatial")).parent

    removed, failed = clear_cache(["uploads", "tiles"], keep=[in_use])

    assert [entry.part for entry in removed] == ["tiles"]
    assert read_visium(in_use).n_obs > 0


def test_recent_partial_upload_is_kept(cache):
    partial = cache / "uploads" / ".abc.partial-1234"
    (partial / "outs").mkdir(parents=True)
    (partial / "outs" / "matrix.mtx").write_text("being unpacked")
    stale = cache / "uploads" / ".def.partial-5678"
    stale.mkdir()
    _make_old(stale, days=1)

    removed = {entry.path.name for entry in clear_cache(["uploads"])[0]}

    assert ".def.partial-5678" in removed
    assert ".abc.partial-1234" not in removed
    assert partial.is_dir()


def test_reconstruction_being_written_is_kept(cache):
    temporary = cache / "reconstructions" / ".outs-0123.tmp-999.npz"
    temporary.write_bytes(b"half written")

    removed, _ = clear_cache(["reconstructions"])

    assert [entry.path.name for entry in removed] == ["outs-0123456789abcdef.npz"]
    assert temporary.is_file()


def test_clear_keeps_symlink_target(cache, tmp_path):
    outside = tmp_path / "my-data"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    (cache / "tiles" / "linked").symlink_to(outside, target_is_directory=True)

    clear_cache(["tiles"])

    assert not (cache / "tiles" / "linked").exists()
    assert (outside / "keep.txt").read_text() == "not the cache's"


def test_symlinked_part_folder_is_not_cleared(cache, tmp_path):
    outside = tmp_path / "big-disk"
    outside.mkdir()
    (outside / "keep.jpg").write_bytes(b"tile")
    shutil.rmtree(cache / "tiles")
    (cache / "tiles").symlink_to(outside, target_is_directory=True)

    removed, failed = clear_cache(["tiles"])

    assert removed == []
    assert (outside / "keep.jpg").is_file()


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "cache.txt"))
    (tmp_path / "cache.txt").write_text("not a folder")

    with pytest.raises(ValueError, match="is a file; set STDIFF_CACHE_DIR to a folder"):
        cache_entries()


def test_cli_lists_then_clears(cache, capsys):
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert str(cache) in listing
    assert any(line.split()[:2] == ["tiles", "1"] for line in listing.splitlines())

    assert main(["cache", "--clear", "tiles", "--dry-run"]) == 0
    assert any((cache / "tiles").iterdir())

    assert main(["cache", "--clear", "all"]) == 0
    assert cache_entries() == []


@pytest.mark.parametrize("argv, message", [
    (["cache", "--clear", "tiles", "thumbnails"], "Invalid cache part 'thumbnails'; choose from"),
    (["cache", "--clear", "--older-than", "-2"], "must be 0 or more days, got -2.0"),
    (["cache", "--older-than", "5"], "add --clear to remove entries"),
    (["cache", "--clear", "all", "--older-than", "nan"], "must be 0 or more days, got nan"),
    (["cache", "--clear", ""], "Invalid cache part ''"),
])
def test_cli_rejects_bad_options(cache, caplog, argv, message):
    assert main(argv) == 2
    assert message in caplog.text
    assert len(cache_entries()) == 4
