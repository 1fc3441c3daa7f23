"""Crash-safe writes: nothing half-written, a full disk named, temporaries of killed runs swept, the fault hook."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pandas as pd
import pytest

from tumorseg import fileio


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "data" / "split.parquet"
    target.parent.mkdir()
    target.write_bytes(b"the previous, complete version")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    with pytest.raises(OSError, match=rf"No space left on device while writing {target}; nothing was written") as info:
        fileio.write_parquet(pd.DataFrame({"a": [1]}), target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous, complete version", "the old output is untouched"
    assert [p.name for p in target.parent.iterdir()] == ["split.parquet"], "no partial temporary left"


def test_a_full_disk_in_a_folder_output(tmp_path):
    out = tmp_path / "preprocessed"
    with pytest.raises(OSError, match=f"while writing {out}"):
        with fileio.atomic_dir(out) as staging:
            (staging / "case.npy").write_bytes(b"x" * 10)
            _enospc()
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    (tmp_path / "data" / f".tmp-{dead_pid}-preprocessed").mkdir(parents=True)
    (tmp_path / "data" / f".tmp-{dead_pid}-preprocessed" / "case.npy").write_bytes(b"x")
    (tmp_path / "models" / "unet").mkdir(parents=True)
    (tmp_path / "models" / "unet" / f".tmp-{dead_pid}-model.safetensors").write_bytes(b"x")
    (tmp_path / "data" / f".tmp-{os.getpid()}-raw").mkdir()  # this process is alive: maybe still writing
    (tmp_path / "data" / "raw").mkdir()
    removed = fileio.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [f".tmp-{dead_pid}-model.safetensors", f".tmp-{dead_pid}-preprocessed"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [f".tmp-{os.getpid()}-raw", "raw"]


def test_the_fault_hook_kills_before_the_rename(tmp_path):
    script = ("from tumorseg.fileio import atomic_file\n"
              "for i in range(3):\n"
              "    with atomic_file('out/metrics.json') as tmp:\n"
              "        tmp.write_text(str(i))\n")
    env = dict(os.environ, **{fileio.FAULT_ENV: "out/metrics.json:2"})
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert proc.returncode == -9, "SIGKILL at the second write"
    assert (tmp_path / "out" / "metrics.json").read_text() == "0", "the first write committed, the second not"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")], "its temporary left behind"


def test_the_sweep_runs_only_in_a_project_root(tmp_path, monkeypatch):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    stale = tmp_path / "data" / f".tmp-{dead}-somebody-elses"
    stale.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fileio, "_swept", False)
    with fileio.atomic_file(tmp_path / "out.txt") as tmp:
        tmp.write_text("x")
    assert stale.exists(), "not a tumorseg project: nothing swept"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setattr(fileio, "_swept", False)
    with fileio.atomic_file(tmp_path / "out.txt") as tmp:
        tmp.write_text("y")
    assert not stale.exists()
