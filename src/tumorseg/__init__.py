"""tumorseg: reproducible brain-tumour segmentation on BraTS-Africa MRI (DVC + MLflow)."""

__version__ = "0.1.0"
