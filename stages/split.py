"""DVC stage `split`: assign every patient to train / val / test in data/split.parquet.

Settings come from params.yaml; the logic lives in tumorseg.data.split (also `tumorseg split`).
"""

from tumorseg.data.split import main

if __name__ == "__main__":
    main()
