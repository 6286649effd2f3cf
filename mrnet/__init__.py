"""MRNet knee-MRI diagnosis: data, models, training, ensembling and evaluation."""

TASKS: tuple[str, ...] = ("abnormal", "acl", "meniscus")
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
SPLITS: tuple[str, ...] = ("train", "valid")

__all__ = ["TASKS", "PLANES", "SPLITS"]
