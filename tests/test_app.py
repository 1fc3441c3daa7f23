"""The Streamlit app: its helpers, the page through Streamlit's AppTest, and a real browser session."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorseg.app import support
from tumorseg.prediction import InputError

APP = Path(support.__file__).with_name("streamlit_app.py")
SAMPLE_ID, SAMPLE = next(iter(support.sample_cases().items()))


def _sample_uploads(with_mask=True):
    files = sorted(SAMPLE.iterdir())
    return [(p.name, p.read_bytes()) for p in files if with_mask or not p.name.endswith("-seg.nii.gz")]


# ---------------------------------------------------------------- helpers


def test_bundled_sample_is_a_complete_brats_case():
    assert SAMPLE_ID.startswith("BraTS-SSA-")
    names = sorted(p.name for p in SAMPLE.iterdir())
    assert names == sorted(f"{SAMPLE_ID}-{k}.nii.gz" for k in ("t1n", "t1c", "t2w", "t2f", "seg"))
    mask = np.asanyarray(nib.load(support.mask_file(SAMPLE)).dataobj)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}


def test_uploads_of_four_files_or_a_zip(tmp_path):
    case, mask = support.case_from_uploads(_sample_uploads(), tmp_path / "a")
    assert sorted(case.files) == ["t1c", "t1n", "t2f", "t2w"] and mask is not None
    case, mask = support.case_from_uploads(_sample_uploads(with_mask=False), tmp_path / "b")
    assert mask is None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _sample_uploads():
            zf.writestr(f"{SAMPLE_ID}/{name}", data)
    case, mask = support.case_from_uploads([("case.zip", buf.getvalue())], tmp_path / "c")
    assert case.case_id == SAMPLE_ID and mask is not None
    assert not (tmp_path / "c" / "case.zip").exists(), "the archive is deleted once unpacked"


def _zip_of_sample() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _sample_uploads():
            zf.writestr(f"{SAMPLE_ID}/{name}", data)
    return buf.getvalue()


def _sessions(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("session-")) if root.exists() else []


def test_an_upload_is_written_once_and_replaced_when_it_changes(tmp_path):
    workspace, reads = support.UploadWorkspace(tmp_path), []

    def read(uploads):
        return lambda: reads.append(1) or uploads

    first = workspace.case_for(("four files",), read(_sample_uploads()))
    for _ in range(20):  # reruns (slider moves) with the same upload
        assert workspace.case_for(("four files",), read(_sample_uploads())) == first
    assert len(reads) == 1 and len(_sessions(tmp_path)) == 1
    size = support.folder_bytes(_sessions(tmp_path)[0])
    assert size == sum(len(d) for _, d in _sample_uploads())
    workspace.case_for(("a zip",), read([("case.zip", _zip_of_sample())]))  # the upload changed
    assert len(reads) == 2 and _sessions(tmp_path) == [workspace.folder] and not first[0].files["t1n"].exists()
    with pytest.raises(InputError):
        workspace.case_for(("broken",), read([("notes.txt", b"x")]))
    assert _sessions(tmp_path) == [], "a rejected upload leaves nothing"
    workspace.case_for(("four files",), read(_sample_uploads()))
    workspace.clear()
    assert _sessions(tmp_path) == []


def test_a_session_that_ends_leaves_nothing(tmp_path):
    import gc

    workspace = support.UploadWorkspace(tmp_path)
    workspace.case_for("k", _sample_uploads)
    assert len(_sessions(tmp_path)) == 1
    del workspace  # Streamlit drops a session's state when the session ends
    gc.collect()
    assert _sessions(tmp_path) == []


def test_all_sessions_together_stay_within_the_disk_bound(tmp_path):
    upload = _sample_uploads()
    size = sum(len(d) for _, d in upload)
    budget_mb = 2.5 * size / 2**20  # room for two sessions' uploads, not three
    sessions = [support.UploadWorkspace(tmp_path, max_disk_mb=budget_mb) for _ in range(4)]
    for i, workspace in enumerate(sessions):
        workspace.case_for(i, lambda: upload)
        assert support.folder_bytes(tmp_path) <= budget_mb * 2**20
    assert [w.folder.is_dir() for w in sessions] == [False, False, True, True], "the least recently used went first"
    case, _ = sessions[0].case_for(0, lambda: upload)  # its owner comes back: written again, still within the bound
    assert case.files["t1n"].is_file() and support.folder_bytes(tmp_path) <= budget_mb * 2**20


@pytest.mark.parametrize("uploads, message", [
    ([("notes.txt", b"hello")], "not a NIfTI file name"),
    ([("case.zip", b"PK but not really a zip")], "not a valid .zip"),
    ([("x-t1n.nii.gz", b"garbage")], "missing sequence(s) t1c, t2w, t2f"),
    ([], "no files uploaded"),
])
def test_bad_uploads_are_input_errors(tmp_path, uploads, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        support.case_from_uploads(uploads, tmp_path)


def test_upload_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(support, "MAX_UPLOAD_MB", 1)
    with pytest.raises(InputError, match="exceeds the 1 MB limit"):
        support.case_from_uploads([("big-t1n.nii.gz", b"0" * (2 * 2**20))], tmp_path)


def test_overlay_volumes_and_dice():
    grey = np.full((4, 4), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0], labels[1, 1], labels[2, 2] = 1, 2, 3
    rgb = support.overlay(grey, labels, alpha=1.0)
    assert tuple(rgb[0, 0]) == support.LABEL_COLOURS[1] and tuple(rgb[2, 2]) == support.LABEL_COLOURS[3]
    assert tuple(rgb[3, 3]) == (100, 100, 100)
    vol = np.zeros((10, 10, 10), np.uint8)
    vol[:2, :5, :1] = 2  # 10 edema voxels
    vol[5, 5, 5] = 3  # 1 enhancing
    volumes = support.region_volumes_cm3(vol, (2.0, 1.0, 1.0))  # 2 mm3 voxels
    assert volumes == pytest.approx({"WT": 0.022, "TC": 0.002, "ET": 0.002})
    truth = vol.copy()
    truth[5, 5, 5] = 0
    dice = support.region_dice(vol, truth)
    assert dice["WT"] == pytest.approx(2 * 10 / 21) and dice["ET"] == 0.0
    assert support.most_tumour_slice(vol) == 0


def test_the_page_preselects_the_champion_when_the_validation_figures_name_one(tmp_path):
    from tumorseg.evaluation.postprocess import PostprocessRules, write_rules

    models = ["unet", "resnet_unet", "transunet", "ensemble"]
    for name, lesion in (("unet", 0.7), ("resnet_unet", 0.6), ("transunet", 0.8)):
        (tmp_path / name).mkdir()
        write_rules(tmp_path / name / "postprocess.json", PostprocessRules(), True, [],
                    {"postprocessed": {"lesion_dice_mean": lesion, "dice_mean": 0.9}})
    assert support.champion_or_none(tmp_path, models) == "transunet"
    assert support.champion_or_none(tmp_path, ["unet"]) is None  # the champion is not among the trained models offered
    (tmp_path / "unet" / "postprocess.json").unlink()
    assert support.champion_or_none(tmp_path, models) is None  # no champion without every model's figures: unmarked


# ---------------------------------------------------------------- the page, in process


@pytest.mark.slow
def test_page_segments_the_sample(tiny_models_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TUMORSEG_MODELS_DIR", str(tiny_models_dir))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert at.sidebar.selectbox(key="model").value == "unet"
    at.sidebar.button(key="run").click().run()
    assert not at.exception and not at.error
    assert at.subheader[0].value == f"{SAMPLE_ID} - unet"
    assert at.table[0] is not None
    at.slider(key="slice").set_value(3).run()
    assert at.slider(key="slice").value == 3


# ---------------------------------------------------------------- a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served_app(tiny_models_dir, tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TUMORSEG_APP_TMP=str(tmp_path / "uploads"))
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tumorseg.cli", "app", "--port", str(port), "--address", "127.0.0.1",
                             "--models-dir", str(tiny_models_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the whole session: no server outlives the test
        proc.wait(timeout=20)
        log.close()
    assert proc.returncode is not None


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("TUMORSEG_REQUIRE_BROWSER"):
            pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    return path


@pytest.mark.slow
def test_in_a_real_browser(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(served_app)
        expect(page.get_by_text("Brain-tumour segmentation")).to_be_visible(timeout=60_000)

        # choose the bundled sample (the default source) and segment it
        page.get_by_text("Sample patient", exact=True).click()
        page.get_by_role("button", name="Run segmentation").click()
        caption = page.get_by_text("Predicted regions, slice")
        expect(caption).to_be_visible(timeout=120_000)
        expect(page.get_by_text("Ground truth, slice")).to_be_visible()
        expect(page.get_by_text(f"{SAMPLE_ID} - unet")).to_be_visible()  # the sample, segmented by the chosen model
        first = int(caption.inner_text().rsplit(" ", 1)[1])

        # move the slider one step with the keyboard, as a person would
        page.get_by_role("slider").focus()
        page.keyboard.press("ArrowLeft" if first > 0 else "ArrowRight")
        moved = first - 1 if first > 0 else first + 1
        expect(page.get_by_text(f"Predicted regions, slice {moved}")).to_be_visible(timeout=30_000)

        # download the mask and check it
        with page.expect_download(timeout=30_000) as download:
            page.get_by_role("button", name="Download the predicted mask").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        img = nib.load(saved)
        labels = np.asanyarray(img.dataobj)
        reference = nib.load(SAMPLE / f"{SAMPLE_ID}-t1n.nii.gz")
        assert saved.name == f"{SAMPLE_ID}-seg.nii.gz"
        assert labels.shape == reference.shape and np.allclose(img.affine, reference.affine)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

        # an upload is written to disk once, however often the page reruns (here: 20 slider moves)
        page.get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").set_input_files([str(p) for p in sorted(SAMPLE.iterdir())])
        uploads = tmp_path / "uploads"
        deadline = time.time() + 60
        while not _sessions(uploads) and time.time() < deadline:  # the page reruns once the files arrived
            time.sleep(0.5)
        [folder] = _sessions(uploads)
        page.get_by_role("button", name="Run segmentation").click()
        expect(page.get_by_text("Segmenting every slice")).to_have_count(0, timeout=120_000)
        expect(page.get_by_text(f"{SAMPLE_ID} - unet")).to_be_visible()
        start = int(page.get_by_text("Predicted regions, slice").inner_text().rsplit(" ", 1)[1])
        step, target = ("ArrowLeft", start - 20) if start >= 20 else ("ArrowRight", start + 20)
        page.get_by_role("slider").focus()
        for _ in range(20):
            page.keyboard.press(step)
            time.sleep(0.1)
        expect(page.get_by_text(f"Predicted regions, slice {target}")).to_be_visible(timeout=30_000)
        assert _sessions(uploads) == [folder], "one folder for the session's one upload"
        assert support.folder_bytes(uploads) == sum(p.stat().st_size for p in SAMPLE.iterdir())

        # a broken upload gives a message in the page, not a stack trace (and replaces the previous upload's files)
        broken = tmp_path / "broken-t1n.nii.gz"
        broken.write_bytes(b"not an image")
        page.locator("input[type=file]").set_input_files(str(broken))
        expect(page.get_by_text("Cannot use this upload")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Traceback")).to_have_count(0)
        assert _sessions(uploads) == [], "the rejected upload left nothing, and the previous one is gone"
        page.screenshot(path=str(tmp_path / "app-upload-error.png"), full_page=True)
        browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
    if os.environ.get("TUMORSEG_SCREENSHOT_DIR"):
        for name in ("app.png", "app-upload-error.png"):
            shutil.copy(tmp_path / name, Path(os.environ["TUMORSEG_SCREENSHOT_DIR"]) / name)
