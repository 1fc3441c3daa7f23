"""DVC stage `train@<model>`: train one model on the patient-level split, log it to MLflow.

Usage: python stages/train.py <model>; the logic lives in tumorseg.training.loop (also `tumorseg train`).
"""

import sys

from tumorseg.training.loop import main

if __name__ == "__main__":
    main(sys.argv[1])
