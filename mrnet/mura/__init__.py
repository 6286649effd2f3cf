"""MURA: study-level abnormality detection on upper-extremity radiographs (Rajpurkar et al.).

The sibling of MRNet in the Stanford family, built from the same library: the backbones of
:mod:`mrnet.core.backbones`, the trainer of :mod:`mrnet.core.trainer`, the statistics, tables
and plots of the core. One CNN
scores each view of a study; the study's probability is the mean over its views.
"""

DATASET_NAME = "MURA-v1.1"
SPLITS: tuple[str, ...] = ("train", "valid")
STUDY_TYPES: tuple[str, ...] = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS",
                                "XR_SHOULDER", "XR_WRIST")

__all__ = ["DATASET_NAME", "SPLITS", "STUDY_TYPES"]
