"""mura/params.yaml loaded into typed, validated dataclasses.

As for MRNet's params.yaml (:mod:`mrnet.config`), an unknown, missing or ill-typed key is a
:class:`~mrnet.core.errors.ParamsError` naming the key. Paths in the file are relative to the
project root, where the MURA stages run (``wdir: ..`` in ``mura/dvc.yaml``).

The dataclass defaults are the paper's recipe (DenseNet-169, ImageNet weights, 320 px, lr 1e-4
divided by 10 on a validation-loss plateau, minibatches of 8 views, the lowest validation loss
kept); ``mura/params.yaml`` holds the CPU demo on synthetic radiographs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mrnet.core.errors import ParamsError
from mrnet.core.params import (at_least, build_sections, check_cache_size, check_evaluation,
                               check_run, count_range, in_unit_interval, load_yaml, one_of,
                               probability)
from mrnet.core.weights import BACKBONES, INITS

PARAMS_FILE = "mura/params.yaml"
SPATIAL_POOLS = ("avg", "max")


@dataclass(frozen=True)
class DataConfig:
    """The dataset folder: an unpacked ``MURA-v1.1`` (the one holding the split CSVs)."""

    root: str = "mura/data/synthetic/MURA-v1.1"


@dataclass(frozen=True)
class SynthesizeConfig:
    """Size and seed of the synthetic radiographs written in the MURA-v1.1 layout."""

    out: str = "mura/data/synthetic"
    seed: int = 0
    n_train: int = 320
    n_valid: int = 140
    # Nominal image side; each view's height and width are drawn around it (0.8x to 1.25x).
    image_size: int = 80
    views_min: int = 1
    views_max: int = 4
    # Share of views saved as RGB PNGs (grey content in three channels); the rest are greyscale.
    rgb_fraction: float = 0.3

    def check(self, key: str) -> None:
        if self.n_train < 7 or self.n_valid < 7:
            raise ParamsError(f"{key}.n_train and {key}.n_valid must be at least 7 "
                              "(one study of each type)")
        at_least(f"{key}.image_size", self.image_size, 32)
        count_range(key, "views_min", "views_max", (self.views_min, self.views_max))
        if not 0.0 <= self.rgb_fraction <= 1.0:
            raise ParamsError(f"{key}.rgb_fraction must be in [0, 1], got {self.rgb_fraction}")


@dataclass(frozen=True)
class PrepareConfig:
    """The training-resolution cache: every view resized to image_size x image_size."""

    out: str = "mura/data/prepared"
    image_size: int = 320

    def check(self, key: str) -> None:
        check_cache_size(key, self.image_size)


@dataclass(frozen=True)
class ModelConfig:
    """The per-view CNN: backbone -> global average pool -> linear -> one logit per view."""

    backbone: str = "densenet169"
    pretrained: bool = True
    # How a random backbone starts: "default" (torchvision's) or "kaiming" (He init, which keeps
    # a from-scratch AlexNet's activations of order one); ImageNet weights replace either.
    init: str = "default"
    # How each view's feature map becomes one vector: "avg" (the paper) or "max", which keeps a
    # finding that fills one cell of a larger map from being averaged away.
    spatial_pool: str = "avg"

    def check(self, key: str) -> None:
        one_of(f"{key}.spatial_pool", self.spatial_pool, SPATIAL_POOLS)
        one_of(f"{key}.backbone", self.backbone, BACKBONES)
        one_of(f"{key}.init", self.init, INITS)


@dataclass(frozen=True)
class AugmentConfig:
    """Random lateral flip and rotation, drawn per view."""

    rotation: float = 30.0
    flip: float = 0.5

    def check(self, key: str) -> None:
        if self.rotation < 0:
            raise ParamsError(f"{key}.rotation must be >= 0, got {self.rotation}")
        probability(f"{key}.flip", self.flip)


SELECT = ("loss", "auc")
LOSS_LEVELS = ("view", "study")


@dataclass(frozen=True)
class TrainConfig:
    """Training of the per-view CNN; the keys :func:`mrnet.core.trainer.run_training` reads (lr,
    weight_decay, lr_factor, lr_patience, epochs, patience) mean what they mean there."""

    out: str = "mura/models"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 0.0
    # Early stopping: epochs without a better validation value of `select`.
    patience: int = 10
    lr_factor: float = 0.1
    lr_patience: int = 0
    # Whole studies are packed into one forward pass until this many views (a study with more
    # views than this goes alone).
    views_per_batch: int = 8
    # The validation value that keeps a checkpoint: "loss" (the paper) or "auc" (study AUC).
    select: str = "loss"
    # "view": every view carries its study's label and weight (the paper); "study": the BCE of
    # the study's mean probability.
    loss: str = "view"
    # CPU threads of the scoring passes: the validation pass after every epoch and the extract
    # stage (0: torch's default, one per core). Batches of small images gain little from more.
    eval_threads: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self, key: str) -> None:
        check_run(key, self, ("epochs", "patience", "views_per_batch"))
        if self.lr_patience < 0:
            raise ParamsError(f"{key}.lr_patience must be >= 0, got {self.lr_patience}")
        one_of(f"{key}.select", self.select, SELECT)
        one_of(f"{key}.loss", self.loss, LOSS_LEVELS)
        self.augment.check(f"{key}.augment")


@dataclass(frozen=True)
class ExtractConfig:
    """Per-view and per-study probability tables of train and valid."""

    out: str = "mura/data/probs"


@dataclass(frozen=True)
class EvaluateConfig:
    """Study-level metrics on valid: AUC and Cohen's kappa with bootstrap CIs."""

    # A study is called abnormal when its mean probability is above this (the paper: 0.5).
    threshold: float = 0.5
    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0

    def check(self, key: str) -> None:
        in_unit_interval(f"{key}.threshold", self.threshold)
        check_evaluation(key, self.bootstrap, self.ci)


@dataclass(frozen=True)
class ViewerConfig:
    """Self-contained HTML viewers (views, CAM overlays, probabilities) of the first valid studies."""

    out: str = "mura/plots/viewer"
    n_studies: int = 4

    def check(self, key: str) -> None:
        if self.n_studies < 0:
            raise ParamsError(f"{key}.n_studies must be >= 0, got {self.n_studies}")


@dataclass(frozen=True)
class MuraParams:
    """Everything in mura/params.yaml."""

    data: DataConfig
    synthesize: SynthesizeConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    extract: ExtractConfig
    evaluate: EvaluateConfig
    viewer: ViewerConfig


_CLASSES = {"data": DataConfig, "synthesize": SynthesizeConfig, "prepare": PrepareConfig,
            "model": ModelConfig, "train": TrainConfig, "extract": ExtractConfig,
            "evaluate": EvaluateConfig, "viewer": ViewerConfig}


def params_from_dict(raw: Mapping[str, Any], source: str = PARAMS_FILE) -> MuraParams:
    """Validate a params mapping (as read from mura/params.yaml) into :class:`MuraParams`."""
    return MuraParams(**build_sections(raw, _CLASSES, source, require=True))


def load_params(path: str | Path = PARAMS_FILE) -> MuraParams:
    """Read and validate mura/params.yaml (read as DVC reads it: ``1e-05`` is a number)."""
    raw = load_yaml(path, "run from the project root, or through `dvc repro mura/dvc.yaml`")
    return params_from_dict(raw or {}, str(path))
