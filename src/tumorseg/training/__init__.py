"""Training: slice sampling and augmentation, losses, the resumable loop, MLflow tracking."""
