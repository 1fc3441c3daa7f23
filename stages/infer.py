"""DVC stage `infer@<model>`: region probabilities of the validation and test patients.

Usage: python stages/infer.py <model>; the logic lives in tumorseg.evaluation.infer.
"""

import sys

from tumorseg.evaluation.infer import main

if __name__ == "__main__":
    main(sys.argv[1])
