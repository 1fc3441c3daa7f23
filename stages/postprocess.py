"""DVC stage `postprocess@<model>`: fit the post-processing thresholds on the validation patients.

Usage: python stages/postprocess.py <model>; the logic lives in tumorseg.evaluation.postprocess.
"""

import sys

from tumorseg.evaluation.postprocess import main

if __name__ == "__main__":
    main(sys.argv[1])
