"""DVC stage `preprocess`: stack, crop, normalise and slice every valid case into data/preprocessed.

Settings come from params.yaml; the logic lives in tumorseg.data.preprocess (also `tumorseg preprocess`).
"""

from tumorseg.data.preprocess import main

if __name__ == "__main__":
    main()
