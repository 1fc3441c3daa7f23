"""Where each pipeline stage reads and writes, relative to the repository root.

dvc.yaml spells the same paths (tests/test_dvc_yaml.py keeps the two in step); stage scripts
and CLI commands import them from here so no module invents its own.
"""

from pathlib import Path

PARAMS = Path("params.yaml")

DATA = Path("data")
RAW_DIR = DATA / "raw"                      # download: the dataset in BraTS-Africa layout
MANIFEST = DATA / "manifest.parquet"        # download: one row per case, validated
PREPROCESSED_DIR = DATA / "preprocessed"    # preprocess: per-case .npy slices + index tables
SLICE_INDEX = PREPROCESSED_DIR / "slice_index.parquet"
CASE_INDEX = PREPROCESSED_DIR / "cases.parquet"
SPLIT = DATA / "split.parquet"              # split: one row per slice with its subset
DOWNLOAD_CACHE = DATA / "downloads"         # url source: verified archives (git/dvc-ignored)
MODELS_DIR = Path("models")                 # train: models/<name>/{model.safetensors, model.json, history.csv};
                                            # postprocess: models/<name>/postprocess.json
CHECKPOINTS_DIR = Path("checkpoints")       # train: resumable state (git/DVC-ignored, survives a kill)
INFERENCE_DIR = Path("inference")           # infer / ensemble: inference/<name>/ (val + test probabilities), <name>.seconds.json
METRICS_DIR = Path("metrics")               # evaluate: metrics/<name>.json (in git)
EVALUATION_DIR = Path("evaluation")         # evaluate: evaluation/<name>/{per_patient.csv, examples.npz}
REPORTS_DIR = Path("reports")               # report: comparison table and figures
