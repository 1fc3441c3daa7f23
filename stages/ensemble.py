"""DVC stage `ensemble`: the mean of the three models' probabilities, scored like a fourth model.

Usage: python stages/ensemble.py; the logic lives in tumorseg.evaluation.ensemble.
"""

from tumorseg.evaluation.ensemble import main

if __name__ == "__main__":
    main()
