"""Archives are unpacked safely; URL downloads are checked against their sha256 first."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import pytest

from conftest import simple_volumes, write_case
from tumorseg.data.archive import ChecksumError, UnsafeArchiveError, fetch_url, unpack_archive
from tumorseg.data.brats import read_manifest
from tumorseg.data.download import DataSettings, run_download

CASE = "BraTS-SSA-00020-000"


def _zip(path, members: dict[str, bytes], symlink: str | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt"])
def test_zip_member_outside_target_is_refused(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        unpack_archive(archive, tmp_path / "out", max_bytes=10**6)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists(), "checked before anything is written"


def test_zip_symlink_is_refused(tmp_path):
    archive = _zip(tmp_path / "link.zip", {"ok.txt": b"x"}, symlink="link")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        unpack_archive(archive, tmp_path / "out", max_bytes=10**6)


def test_tar_links_and_traversal_are_refused(tmp_path):
    for kind in ("symlink", "hardlink", "traversal"):
        path = tmp_path / f"{kind}.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            if kind == "traversal":
                info = tarfile.TarInfo("../escape.txt")
                info.size = 3
                tf.addfile(info, io.BytesIO(b"bad"))
            else:
                info = tarfile.TarInfo("link")
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = "/etc/passwd"
                tf.addfile(info)
        with pytest.raises(UnsafeArchiveError):
            unpack_archive(path, tmp_path / f"out-{kind}", max_bytes=10**6)
    assert not (tmp_path / "escape.txt").exists()


def test_size_bound_is_enforced_while_writing(tmp_path):
    archive = _zip(tmp_path / "big.zip", {"a.bin": b"\0" * 200_000, "b.bin": b"\0" * 200_000})
    with pytest.raises(UnsafeArchiveError, match="unpacks to more than"):
        unpack_archive(archive, tmp_path / "out", max_bytes=300_000)
    unpack_archive(archive, tmp_path / "ok", max_bytes=500_000)
    assert (tmp_path / "ok" / "b.bin").stat().st_size == 200_000


def _dataset_zip(tmp_path):
    src = tmp_path / "src"
    write_case(src, CASE, simple_volumes())
    archive = tmp_path / "BraTS-Africa.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return archive


def test_local_zip_source(tmp_path):
    archive = _dataset_zip(tmp_path)
    before = archive.read_bytes()
    settings = DataSettings(source="local", local_path=str(archive), workers=1)
    df = run_download(settings, tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")
    assert df["case_id"].tolist() == [CASE] and df["status"].tolist() == ["ok"]
    assert archive.read_bytes() == before


@pytest.fixture
def http_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_checks_sha256_before_unpacking(tmp_path, http_server):
    archive = _dataset_zip(tmp_path)
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = f"{http_server}/{archive.name}"

    bad = DataSettings(source="url", url=url, sha256="0" * 64, workers=1)
    with pytest.raises(ChecksumError, match="Nothing was unpacked"):
        run_download(bad, tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "dl" / archive.name).exists()

    with pytest.raises(ValueError, match="data.sha256 is required"):
        run_download(DataSettings(source="url", url=url), tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")

    ok = DataSettings(source="url", url=url, sha256=good, workers=1)
    run_download(ok, tmp_path / "raw", tmp_path / "m.parquet", tmp_path / "dl")
    manifest = read_manifest(tmp_path / "m.parquet")
    assert manifest["status"].tolist() == ["ok"]
    assert (tmp_path / "dl" / archive.name).is_file(), "verified archive kept so a rerun does not download again"


def test_fetch_reuses_verified_file(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    assert fetch_url("http://127.0.0.1:9/never-contacted.zip", path, digest) == path
