"""Evaluation: BraTS metrics, whole-volume inference, and the cross-model report."""
