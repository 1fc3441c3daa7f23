"""DVC stage `evaluate@<model>`: score the model (or the ensemble) on every test patient in 3D.

Usage: python stages/evaluate.py <model>; the logic lives in tumorseg.evaluation.evaluate.
"""

import sys

from tumorseg.evaluation.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1])
