"""DVC stage `report`: the three models side by side (table, training curves, qualitative figure).

The logic lives in tumorseg.evaluation.report (also `tumorseg report`).
"""

from tumorseg.evaluation.report import main

if __name__ == "__main__":
    main()
