"""The ``download`` stage: materialise the dataset under data/raw and validate every case.

Whatever the source (the synthetic generator, a local folder or .zip, a URL), the result is the
same: a BraTS-Africa tree under ``data/raw`` that DVC versions, and a manifest with one row per
case saying whether it is usable and, if not, which file is wrong and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from tumorseg.data import archive, synthetic
from tumorseg.data.brats import BadCaseError, discover_cases, manifest_frame, validate_case
from tumorseg import paths
from tumorseg.config import Checked, from_mapping, in_range, read_params
from tumorseg.fileio import atomic_dir, write_parquet
from tumorseg.logs import setup_logging
from tumorseg.parallel import parallel_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings(Checked):
    source: Literal["synthetic", "local", "url"] = "synthetic"
    synthetic: synthetic.SyntheticSettings = field(default_factory=synthetic.SyntheticSettings)
    local_path: str | None = None  # a BraTS-Africa folder or the .zip as downloaded
    url: str | None = None  # http(s)://, s3://, gs://
    sha256: str | None = None  # required with source: url
    on_bad_case: Literal["skip", "fail"] = "skip"
    max_unpacked_gb: float = field(default=60.0, metadata=in_range(0, low_open=True))
    workers: int = field(default=2, metadata=in_range(1))


def acquire(settings: DataSettings, raw_dir: Path, downloads_dir: Path) -> None:
    """Fill ``raw_dir`` (already empty) from the configured source."""
    if settings.source == "synthetic":
        synthetic.write_dataset(raw_dir, settings.synthetic, workers=settings.workers)
        return
    max_bytes = int(settings.max_unpacked_gb * 1e9)
    if settings.source == "local":
        if not settings.local_path:
            raise ValueError("params.yaml: data.source is 'local' but data.local_path is empty; set it to the BraTS-Africa folder or .zip")
        src = Path(settings.local_path).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"data.local_path: {src} does not exist")
        if src.is_dir():
            archive.copy_tree(src, raw_dir / src.name)
        elif archive.is_archive(src):
            archive.unpack_archive(src, raw_dir, max_bytes)
        else:
            raise ValueError(f"data.local_path: {src} is neither a folder nor a .zip/.tar archive")
        return
    if not settings.url:
        raise ValueError("params.yaml: data.source is 'url' but data.url is empty")
    if not settings.sha256:
        raise ValueError(
            f"params.yaml: data.sha256 is required with data.source 'url' ({settings.url}); "
            "compute it with `sha256sum <archive>` where you host the file"
        )
    name = Path(settings.url.split("?", 1)[0]).name or "dataset.zip"
    local = archive.fetch_url(settings.url, downloads_dir / name, settings.sha256)
    archive.unpack_archive(local, raw_dir, max_bytes)


def run_download(settings: DataSettings, raw_dir: Path, manifest_path: Path, downloads_dir: Path) -> pd.DataFrame:
    raw_dir, manifest_path = Path(raw_dir), Path(manifest_path)
    with atomic_dir(raw_dir) as staging:
        acquire(settings, staging, Path(downloads_dir))
        cases = discover_cases(staging)
        if not cases:
            raise FileNotFoundError(
                f"no BraTS case folders (named like BraTS-SSA-00002-000) found in the {settings.source} source; "
                "check data.local_path / data.url"
            )
        rows = parallel_map(_validate, [(c, staging) for c in cases], workers=settings.workers, desc="validate cases")
        bad = [r for r in rows if r.status != "ok"]
        for r in bad:
            log.warning("bad case %s: %s", r.case_id, r.reason)
        if bad and settings.on_bad_case == "fail":
            listing = "\n".join(f"  {r.case_id}: {r.reason}" for r in bad)
            raise BadCaseError(
                f"{len(bad)} of {len(rows)} cases failed validation (data.on_bad_case: fail):\n{listing}\n"
                "Fix or remove them, or set data.on_bad_case: skip to go on without them."
            )
        if len(bad) == len(rows):
            raise BadCaseError(f"all {len(rows)} cases failed validation; first: {bad[0].case_id}: {bad[0].reason}")
        df = manifest_frame(rows)
        write_parquet(df, manifest_path)
    n_ok = int((df["status"] == "ok").sum())
    log.info("manifest: %d cases ok, %d skipped -> %s", n_ok, len(df) - n_ok, manifest_path)
    return df


def _validate(job):
    case, root = job
    return validate_case(case, root)


def main(params_path: str | Path = paths.PARAMS) -> pd.DataFrame:
    """Stage entry point: settings from params.yaml ``data``, outputs at the paths in dvc.yaml."""
    setup_logging()
    settings = from_mapping(DataSettings, read_params(params_path).get("data"), "data")
    return run_download(settings, paths.RAW_DIR, paths.MANIFEST, paths.DOWNLOAD_CACHE)
