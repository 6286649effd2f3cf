"""MRNet's params.yaml loaded into typed, validated dataclasses (with :mod:`mrnet.core.params`).

params.yaml is the single source of truth. An unknown key, a missing key or a value of the
wrong type is a :class:`ParamsError` naming the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mrnet import TASKS
from mrnet.core.errors import ParamsError
from mrnet.core.params import (at_least, build, build_sections, check_cache_size, check_evaluation,
                               check_run, count_range, load_yaml, merge, one_of, probability)
from mrnet.core.weights import BACKBONES, INITS


@dataclass(frozen=True)
class DataConfig:
    """Which dataset the pipeline reads, and how model selection data is chosen."""

    root: str = "data/synthetic/MRNet-v1.0"
    # > 0: hold out this stratified fraction of train for early stopping, checkpoint choice and
    # the ensemble fit, so the valid split stays untouched by every choice.
    tune_fraction: float = 0.0
    split_seed: int = 0

    def check(self, key: str) -> None:
        if not 0.0 <= self.tune_fraction < 1.0:
            raise ParamsError(f"{key}.tune_fraction must be in [0, 1), got {self.tune_fraction}")


@dataclass(frozen=True)
class SynthesizeConfig:
    """Size and seed of the synthetic knee-phantom dataset."""

    out: str = "data/synthetic"
    seed: int = 0
    n_train: int = 160
    n_valid: int = 80
    image_size: int = 64
    slices_min: int = 10
    slices_max: int = 20

    def check(self, key: str) -> None:
        if self.n_train < 4 or self.n_valid < 4:
            raise ParamsError(f"{key}.n_train and {key}.n_valid must be at least 4")
        if self.n_train + self.n_valid > 10000:
            raise ParamsError(f"{key}: at most 10000 cases fit 4-digit case ids")
        at_least(f"{key}.image_size", self.image_size, 32)
        count_range(key, "slices_min", "slices_max", (self.slices_min, self.slices_max))


@dataclass(frozen=True)
class PrepareConfig:
    """The training-resolution cache of each split and plane."""

    out: str = "data/prepared"
    image_size: int = 64

    def check(self, key: str) -> None:
        check_cache_size(key, self.image_size)


@dataclass(frozen=True)
class ModelConfig:
    """The per-plane MRNet CNN."""

    backbone: str = "alexnet"
    pretrained: bool = False
    slice_pool: str = "max"
    spatial_pool: str = "avg"
    init: str = "default"

    def check(self, key: str) -> None:
        one_of(f"{key}.backbone", self.backbone, BACKBONES)
        if self.slice_pool not in ("max", "mean"):
            raise ParamsError(f"{key}.slice_pool must be 'max' or 'mean', got {self.slice_pool!r}")
        if self.spatial_pool not in ("avg", "max"):
            raise ParamsError(f"{key}.spatial_pool must be 'avg' or 'max', "
                              f"got {self.spatial_pool!r}")
        if self.init not in INITS:
            raise ParamsError(f"{key}.init must be 'default' or 'kaiming', got {self.init!r}")
        if self.init != "default" and self.pretrained:
            raise ParamsError(f"{key}.init only sets how a random backbone starts; with "
                              f"{key}.pretrained true set it to 'default'")


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine drawn once per exam. Translation is in pixels at 256 px."""

    rotation: float = 25.0
    translation: float = 25.0
    flip: float = 0.5

    def check(self, key: str) -> None:
        if self.rotation < 0 or self.translation < 0:
            raise ParamsError(f"{key}.rotation and {key}.translation must be >= 0")
        probability(f"{key}.flip", self.flip)


@dataclass(frozen=True)
class TrainConfig:
    """Shared training settings; a task's section in ``task:`` may override any of them."""

    out: str = "models"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    epochs: int = 50
    lr: float = 1e-5
    weight_decay: float = 0.01
    patience: int = 10
    lr_factor: float = 0.3
    lr_patience: int = 5
    exams_per_batch: int = 1
    # > 1: data-parallel over this many processes under torchrun (one GPU each, or CPU/gloo);
    # each process takes exams_per_batch exams per step.
    processes: int = 1
    # CPU threads of the scoring passes: the validation pass after every epoch and the extract
    # stage (0: torch's default, one per core). Batches of small images gain little from more.
    eval_threads: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self, key: str) -> None:
        check_run(key, self, ("epochs", "patience", "exams_per_batch", "processes"))
        self.augment.check(f"{key}.augment")


@dataclass(frozen=True)
class ExtractConfig:
    """Per-exam probabilities of each CNN."""

    out: str = "data/probs"


@dataclass(frozen=True)
class EnsembleConfig:
    """Logistic regression over the three planes' probabilities of a task."""

    out: str = "models"
    C: float = 1.0
    # task -> target prevalence: the ensemble's probabilities are moved from the fit split's
    # prevalence to this one by the prior-shift correction of the logit. Empty: none.
    prevalence: Mapping[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        if self.C <= 0:
            raise ParamsError(f"{key}.C must be > 0, got {self.C}")
        for task, value in self.prevalence.items():
            if task not in TASKS:
                raise ParamsError(f"unknown params key {key}.prevalence.{task} "
                                  f"(tasks: {', '.join(TASKS)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 < value < 1.0:
                raise ParamsError(f"{key}.prevalence.{task} must be a number in (0, 1), "
                                  f"got {value!r}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Valid-split metrics with bootstrap confidence intervals."""

    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0
    # The error report lists, per task, this many false positives and false negatives.
    n_errors: int = 2

    def check(self, key: str) -> None:
        if self.n_errors < 0:
            raise ParamsError(f"{key}.n_errors must be >= 0, got {self.n_errors}")
        check_evaluation(key, self.bootstrap, self.ci)


@dataclass(frozen=True)
class ViewerConfig:
    """Self-contained HTML viewers (slices, CAM overlays, probabilities) of the exams that the
    evaluate stage's error report lists."""

    out: str = "plots/viewer"
    # The task whose CAM the viewer shows first (a selector switches between all three).
    task: str = "acl"

    def check(self, key: str) -> None:
        one_of(f"{key}.task", self.task, TASKS)


@dataclass(frozen=True)
class MultitaskConfig:
    """The three-plane, three-task network trained beside the nine per-plane CNNs."""

    enabled: bool = True
    out: str = "models/multitask"
    # Overrides of any train key for this network (e.g. epochs, lr, exams_per_batch).
    train: Mapping[str, Any] = field(default_factory=dict)


KNEEMRI_CROPS = ("roi", "full")
KNEEMRI_INITS = ("mrnet", "scratch")


@dataclass(frozen=True)
class KneemriSyntheticConfig:
    """Size and seed of the synthetic KneeMRI-format phantoms (ten folders vol01..vol10)."""

    out: str = "data/synthetic-kneemri"
    seed: int = 0
    exams_per_folder: int = 20
    image_size: int = 320
    slices_min: int = 18
    slices_max: int = 26

    def check(self, key: str) -> None:
        # Two folders make the smallest split; each split needs two exams of each diagnosis.
        if self.exams_per_folder < 3:
            raise ParamsError(f"{key}.exams_per_folder must be at least 3, "
                              f"got {self.exams_per_folder}")
        at_least(f"{key}.image_size", self.image_size, 32)
        count_range(key, "slices_min", "slices_max", (self.slices_min, self.slices_max))


@dataclass(frozen=True)
class KneemriConfig:
    """External validation on the public KneeMRI (Rijeka) dataset, zero-shot and retrained."""

    enabled: bool = False
    # A folder in the KneeMRI layout; the default is the phantoms kneemri_synthesize writes.
    root: str = "data/synthetic-kneemri"
    # roi: a square crop centred on the metadata ROI, roi_scale times its larger side (and
    # its slice range scaled alike); full: every slice, whole.
    crop: str = "roi"
    roi_scale: float = 2.0
    out: str = "data/kneemri"
    # mrnet: retraining starts from the trained ACL sagittal CNN; scratch: from model.pretrained.
    init: str = "mrnet"
    # Overrides of any train key for the retrained CNNs (e.g. epochs, lr).
    train: Mapping[str, Any] = field(default_factory=dict)
    synthetic: KneemriSyntheticConfig = field(default_factory=KneemriSyntheticConfig)

    def check(self, key: str) -> None:
        if self.crop not in KNEEMRI_CROPS:
            raise ParamsError(f"{key}.crop must be one of {', '.join(KNEEMRI_CROPS)}, "
                              f"got {self.crop!r}")
        if self.init not in KNEEMRI_INITS:
            raise ParamsError(f"{key}.init must be one of {', '.join(KNEEMRI_INITS)}, "
                              f"got {self.init!r}")
        if self.roi_scale < 1.0:
            raise ParamsError(f"{key}.roi_scale must be at least 1, got {self.roi_scale}")
        if not self.root:
            raise ParamsError(f"{key}.root is empty; keep the phantom folder "
                              f"({self.synthetic.out}) or name a KneeMRI folder, and switch "
                              f"the stages with {key}.enabled")
        self.synthetic.check(f"{key}.synthetic")


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml."""

    data: DataConfig
    synthesize: SynthesizeConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    task: Mapping[str, Mapping[str, Any]]
    extract: ExtractConfig
    ensemble: EnsembleConfig
    evaluate: EvaluateConfig
    viewer: ViewerConfig
    multitask: MultitaskConfig
    kneemri: KneemriConfig

    def kneemri_train(self) -> TrainConfig:
        """Training settings of the retrained KneeMRI CNNs: train keys with their overrides."""
        merged = merge(dataclasses.asdict(self.train), dict(self.kneemri.train))
        cfg = build(TrainConfig, merged, "kneemri.train")
        cfg.check("kneemri.train")
        return cfg

    def multitask_train(self) -> TrainConfig:
        """Training settings of the multitask network: train keys with its overrides."""
        merged = merge(dataclasses.asdict(self.train), dict(self.multitask.train))
        cfg = build(TrainConfig, merged, "multitask.train")
        cfg.check("multitask.train")
        return cfg

    def train_for(self, task: str) -> TrainConfig:
        """The training settings of ``task``: shared keys with the task's overrides applied."""
        if task not in TASKS:
            raise ParamsError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        overrides = dict(self.task.get(task) or {})
        merged = merge(dataclasses.asdict(self.train), overrides)
        cfg = build(TrainConfig, merged, f"task.{task}")
        cfg.check(f"task.{task}")
        return cfg


SECTIONS = {
    "data": DataConfig,
    "synthesize": SynthesizeConfig,
    "prepare": PrepareConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "extract": ExtractConfig,
    "ensemble": EnsembleConfig,
    "evaluate": EvaluateConfig,
    "viewer": ViewerConfig,
    "multitask": MultitaskConfig,
    "kneemri": KneemriConfig,
}


def params_from_dict(raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from params.yaml) into :class:`Params`."""
    sections = build_sections(raw, SECTIONS, source, extra=("task",))
    tasks = raw.get("task") or {}
    if not isinstance(tasks, Mapping):
        raise ParamsError(f"{source}: params key task must be a mapping of task -> overrides")
    for t in tasks:
        if t not in TASKS:
            raise ParamsError(f"unknown params key task.{t} (tasks: {', '.join(TASKS)})")
    params = Params(task={t: dict(tasks.get(t) or {}) for t in TASKS}, **sections)
    for t in TASKS:
        params.train_for(t)  # overrides are validated up front, not when a stage reaches them
    params.multitask_train()
    params.kneemri_train()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    raw = load_yaml(path, "run from the project root")
    return params_from_dict(raw or {}, str(path))
