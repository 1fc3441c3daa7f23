"""How close DDP training with 2 CPU processes (gloo) stays to one process with the same global batch: the measurement
behind tests/test_distributed.py's tolerances. Runs the test's two trainings on the test's tiny synthetic data.

    python bench/ddp_closeness.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

import pandas as pd  # noqa: E402

from test_distributed import _project, _train  # noqa: E402
from tumorseg.data.download import DataSettings, run_download  # noqa: E402
from tumorseg.data.preprocess import PreprocessSettings, run_preprocess  # noqa: E402
from tumorseg.data.split import SplitSettings, run_split  # noqa: E402
from tumorseg.data.synthetic import SyntheticSettings  # noqa: E402


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ddp-closeness-"))
    tiny = base / "tiny"  # as tests/conftest.py's tiny_pipeline
    run_download(DataSettings(synthetic=SyntheticSettings(n_patients=8, shape=(48, 48, 24), seed=3), workers=1),
                 tiny / "raw", tiny / "manifest.parquet", tiny / "downloads")
    run_preprocess(PreprocessSettings(workers=1), tiny / "manifest.parquet", tiny / "raw", tiny / "pre")
    run_split(SplitSettings(fractions=(0.5, 0.25, 0.25)), tiny / "pre" / "slice_index.parquet", tiny / "split.parquet")
    for n in (1, 2):
        root = _project(base / str(n), tiny, n)
        t0 = time.perf_counter()
        done = _train(root)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        history = pd.read_csv(root / "models" / "unet" / "history.csv")
        print(f"{n} process(es), {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"epoch {r.epoch}: train loss {r.train_loss:.4f} val Dice {r.val_dice_mean:.4f}" for r in history.itertuples()))


if __name__ == "__main__":
    main()
