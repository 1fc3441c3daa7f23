"""Fetching and unpacking dataset archives safely.

An archive is untrusted input: no member may land outside the target folder (``../`` or
absolute names), links are refused, and the unpacked size is bounded while it is written (a
zip's declared sizes can lie). A URL download is checked against its sha256 before anything is
unpacked.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from tumorseg.fileio import atomic_file, sha256_file

_CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class UnsafeArchiveError(ValueError):
    """The archive tries to write outside its target, contains links, or unpacks too large."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the one in params.yaml."""


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _safe_member_path(target: Path, name: str, archive: Path) -> Path:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member '{name}' would be written outside {target}; refusing to unpack")
    dest = (target / Path(*posix.parts)).resolve() if posix.parts else target.resolve()
    if not dest.is_relative_to(target.resolve()):
        raise UnsafeArchiveError(f"{archive}: member '{name}' resolves outside {target}; refusing to unpack")
    return dest


def unpack_archive(archive: str | Path, target: str | Path, max_bytes: int) -> None:
    """Unpack a .zip or tar archive into ``target`` with every member checked first."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, target, max_bytes)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, target, max_bytes)
    else:
        raise ValueError(f"{archive}: neither a zip nor a tar archive")


class _Budget:
    def __init__(self, archive: Path, max_bytes: int):
        self.archive, self.max_bytes, self.used = archive, max_bytes, 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise UnsafeArchiveError(
                f"{self.archive}: unpacks to more than {self.max_bytes / 1e9:.2f} GB "
                "(data.max_unpacked_gb); raise the limit in params.yaml if this archive is trusted"
            )


def _copy_bounded(src, dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            budget.take(len(chunk))
            out.write(chunk)


def _unpack_zip(archive: Path, target: Path, max_bytes: int) -> None:
    budget = _Budget(archive, max_bytes)
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            budget.take(declared)
        for m in members:
            dest = _safe_member_path(target, m.filename, archive)
            mode = (m.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise UnsafeArchiveError(f"{archive}: member '{m.filename}' is a symbolic link; refusing to unpack")
        for m in tqdm(members, desc=f"unpack {archive.name}", unit="file", dynamic_ncols=True):
            dest = _safe_member_path(target, m.filename, archive)
            if m.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(m) as src:
                _copy_bounded(src, dest, budget)


def _unpack_tar(archive: Path, target: Path, max_bytes: int) -> None:
    budget = _Budget(archive, max_bytes)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _safe_member_path(target, m.name, archive)
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"{archive}: member '{m.name}' is a link; refusing to unpack")
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member '{m.name}' is a device or fifo; refusing to unpack")
        for m in tqdm(members, desc=f"unpack {archive.name}", unit="file", dynamic_ncols=True):
            dest = _safe_member_path(target, m.name, archive)
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            assert src is not None
            with src:
                _copy_bounded(src, dest, budget)


def fetch_url(url: str, dest: str | Path, sha256: str) -> Path:
    """Download ``url`` (http(s), s3, gs, any fsspec protocol) to ``dest``, verifying sha256.

    The file appears at ``dest`` only once its checksum matched; an existing verified file is
    reused, so a re-run does not download again.
    """
    import fsspec

    dest = Path(dest)
    expected = sha256.lower().strip()
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    digest = hashlib.sha256()
    with atomic_file(dest) as tmp:
        with fsspec.open(url, "rb") as src, open(tmp, "wb") as out:
            total = getattr(src, "size", None)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}", dynamic_ncols=True) as bar:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"{url}: sha256 is {actual}, params.yaml data.sha256 says {expected}; "
                "the download is corrupt or the URL serves another file. Nothing was unpacked."
            )
    return dest


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a dataset folder (file contents only), leaving the source untouched."""
    shutil.copytree(src, dest, copy_function=shutil.copyfile, dirs_exist_ok=True, symlinks=False)
