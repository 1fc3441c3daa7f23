"""DVC stage `download`: fetch or generate BraTS-Africa into data/raw and validate every case into data/manifest.parquet.

Settings come from params.yaml; the logic lives in tumorseg.data.download (also `tumorseg download`).
"""

from tumorseg.data.download import main

if __name__ == "__main__":
    main()
