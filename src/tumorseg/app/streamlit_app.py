"""The Streamlit page (`tumorseg app` starts it): pick or upload a patient, segment it, browse it.

Layout only; the logic is in tumorseg.app.support and tumorseg.prediction. Errors in the input are
shown as messages in the page, never as a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from tumorseg.app import support
from tumorseg.data.labels import LABEL_NAMES, REGION_NAMES, SEQUENCES
from tumorseg.data.orientation import to_model_orientation
from tumorseg.models import MODEL_NAMES
from tumorseg.prediction import InputError, case_from_folder, label_map_bytes, load_case, load_predictor

MODELS_DIR = Path(os.environ.get("TUMORSEG_MODELS_DIR", "models"))
SEQUENCE_NAMES = {"t1n": "T1 (native)", "t1c": "T1 + contrast", "t2w": "T2", "t2f": "T2-FLAIR"}


@st.cache_resource(show_spinner=False)
def device_and_precision():
    """The GPU when there is one (bf16 autocast there, as the pipeline), else the CPU in fp32 on the pipeline's pinned
    kernels and threads (RuntimeSettings' defaults), so it shows what `tumorseg predict` writes."""
    from tumorseg.models.runtime import RuntimeSettings, pick_amp_dtype, pick_device, pin_cpu_kernels

    defaults = RuntimeSettings()
    pin_cpu_kernels(defaults.cpu_kernels, defaults.num_threads)
    device = pick_device("auto")
    return device, pick_amp_dtype("auto", device)


@st.cache_resource(show_spinner="Loading the model...")
def cached_model(ref: str):
    """Loaded once per model and server (not once per click)."""
    return load_predictor(ref, MODELS_DIR, device_and_precision()[0])


def available_models() -> list[str]:
    trained = [m for m in MODEL_NAMES if (MODELS_DIR / m / "model.json").is_file()]
    return trained + (["ensemble"] if len(trained) == len(MODEL_NAMES) else [])


def segment(case, mask_path, model_ref: str, tta: bool) -> dict:
    channels, reference = load_case(case)
    mask = support.load_mask_for(channels[0].shape, mask_path, reference.affine)
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
    predictor = cached_model(model_ref)
    device, amp_dtype = device_and_precision()
    labels = predictor.predict(channels, spacing, device=device, amp_dtype=amp_dtype, tta="all" if tta else "none",
                               affine=reference.affine)
    # shown as the models see it, so the slider walks axial slices whatever the upload's orientation; the download
    # keeps the upload's own voxel grid
    shown, shown_spacing = to_model_orientation([*channels, labels] + ([mask] if mask is not None else []), spacing,
                                                reference.affine)
    return {"case_id": case.case_id, "channels": shown[:len(channels)], "labels": shown[len(channels)],
            "mask": shown[-1] if mask is not None else None, "model": model_ref, "postprocess": predictor.rules_source,
            "spacing": shown_spacing, "tta": tta, "device": str(device), "download": label_map_bytes(labels, reference)}


def sidebar() -> tuple[str | None, object | None, Path | None, bool]:
    st.sidebar.header("Patient")
    source = st.sidebar.radio("Source", ["Sample patient", "Upload"], key="source")
    case = mask = None
    if source == "Sample patient":
        samples = support.sample_cases()
        chosen = st.sidebar.selectbox("Sample", list(samples), key="sample")
        if chosen:
            case, mask = case_from_folder(samples[chosen]), support.mask_file(samples[chosen])
    else:
        files = st.sidebar.file_uploader(
            f"The four NIfTI files (t1n, t1c, t2w, t2f; a -seg mask optional) or one .zip of a case folder; "
            f"at most {support.MAX_UPLOAD_MB} MB", accept_multiple_files=True, key="upload")
        workspace = st.session_state.setdefault("uploads", support.UploadWorkspace())
        if files:
            key = tuple((f.name, f.size, f.file_id) for f in files)
            try:
                case, mask = workspace.case_for(key, lambda: [(f.name, f.getvalue()) for f in files])
            except InputError as exc:
                st.error(f"Cannot use this upload: {exc}")
        else:
            workspace.clear()  # the upload was removed: so are its files
    st.sidebar.header("Model")
    models = available_models()
    if not models:
        st.sidebar.error(f"No trained model in {MODELS_DIR}/: run `dvc repro` first")
        return None, case, mask, False
    best = support.champion_or_none(MODELS_DIR, models)
    model = st.sidebar.selectbox("Model", models, index=models.index(best) if best else 0, key="model",
                                 format_func=lambda m: f"{m} (champion: best on validation)" if m == best else m)
    tta = st.sidebar.checkbox("Test-time augmentation", value=True, key="tta",
                              help="Average the four in-plane mirrorings, as the pipeline's evaluation does (4x the time)")
    st.sidebar.caption(f"Runs on {device_and_precision()[0]}")
    return model, case, mask, tta


def show(result: dict) -> None:
    channels, labels, mask = result["channels"], result["labels"], result["mask"]
    st.subheader(f"{result['case_id']} - {result['model']}")
    st.caption((f"Post-processing fitted on the validation patients: {result['postprocess']}" if result.get("postprocess")
                else "No post-processing applied (none fitted for this model)")
               + f"; test-time augmentation {'on' if result['tta'] else 'off'}; {result['device']}")
    depth = labels.shape[2]
    z = st.slider("Axial slice", 0, depth - 1, support.most_tumour_slice(labels), key="slice")
    seq = st.selectbox("Sequence shown", SEQUENCES, index=SEQUENCES.index("t2f"), format_func=SEQUENCE_NAMES.get, key="sequence")
    grey = support.display_slice(channels[SEQUENCES.index(seq)], z)
    cols = st.columns(2 if mask is not None else 1)
    cols[0].image(support.overlay(grey, labels[:, :, z].T), caption=f"Predicted regions, slice {z}", use_container_width=True)
    if mask is not None:
        cols[1].image(support.overlay(grey, mask[:, :, z].T), caption=f"Ground truth, slice {z}", use_container_width=True)
    legend = " ".join(
        f"<span style='background:rgb{support.LABEL_COLOURS[k]};padding:0 0.6em;margin-right:0.3em'></span>{name}&nbsp;&nbsp;"
        for k, name in LABEL_NAMES.items())
    st.markdown(legend, unsafe_allow_html=True)
    volumes = support.region_volumes_cm3(labels, result["spacing"])
    table = {"region": list(REGION_NAMES), "predicted volume (cm3)": [f"{volumes[r]:.2f}" for r in REGION_NAMES]}
    if mask is not None:
        truth = support.region_volumes_cm3(mask, result["spacing"])
        dice = support.region_dice(labels, mask)
        lesions = support.region_lesion_scores(labels, mask, result["spacing"])
        table["expert volume (cm3)"] = [f"{truth[r]:.2f}" for r in REGION_NAMES]
        table["Dice"] = [f"{dice[r]:.3f}" for r in REGION_NAMES]
        table["lesion-wise Dice (BraTS 2023)"] = [f"{lesions[r].dice:.3f}" for r in REGION_NAMES]
        table["false-positive lesions"] = [str(lesions[r].fp) for r in REGION_NAMES]
    st.table(table)
    st.download_button("Download the predicted mask (.nii.gz)", result["download"],
                       file_name=f"{result['case_id']}-seg.nii.gz", mime="application/gzip", key="download")


def main() -> None:
    st.set_page_config(page_title="tumorseg", layout="wide")
    st.title("Brain-tumour segmentation")
    st.caption("BraTS regions: WT = whole tumour, TC = tumour core, ET = enhancing tumour. Research use only.")
    model, case, mask, tta = sidebar()
    if model and case is not None and st.sidebar.button("Run segmentation", type="primary", key="run"):
        with st.spinner("Segmenting every slice..."):
            try:
                st.session_state["result"] = segment(case, mask, model, tta)
            except InputError as exc:
                st.session_state.pop("result", None)
                st.error(f"Cannot segment this patient: {exc}")
            except Exception as exc:  # never a stack trace in the page; the message still says what failed
                st.session_state.pop("result", None)
                st.error(f"Segmentation failed: {type(exc).__name__}: {exc}")
    result = st.session_state.get("result")
    if result is not None:
        show(result)
    else:
        st.info("Choose a patient and a model in the sidebar, then press **Run segmentation**.")


main()
