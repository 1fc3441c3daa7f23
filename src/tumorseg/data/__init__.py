"""Data pipeline: acquire, validate, preprocess and split BraTS-Africa."""
