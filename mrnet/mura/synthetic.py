"""Synthetic upper-extremity radiographs written in the MURA-v1.1 layout.

A fresh clone has no MURA, so the pipeline runs on generated studies that keep its contract:
the folder layout, the two header-less CSVs per split, 1 to many views per study, images of
varying size, greyscale and RGB PNGs, seven study types with their own abnormal rates (so the
per-type loss weights matter).

Each study is one limb of its type (humerus, forearm, elbow, ...), drawn as bones (bright cortex
around a greyer medulla) in soft tissue, seen in each view from its own angle, scale, position
and side. An abnormal study carries one local finding in one bone, at the same place in every
view that shows it (most do): a fracture line, a lucent lesion, or orthopaedic hardware (a plate
with screws). So that a model must learn where and what, not how bright:

- every view has its own exposure (gain, offset, gamma), noise and sometimes a collimation frame,
  which dominate the image's global statistics;
- most views carry a laterality marker as bright as hardware and up to its size, and normal and
  abnormal views alike have dark gas bubbles in the soft tissue that look like a lucency outside
  the bone.

A logistic regression on per-study intensity statistics stays near chance (tested in
``tests/test_mura_synthetic.py``). Everything is deterministic from the seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mrnet.core.io import atomic_dir
from mrnet.mura import DATASET_NAME, STUDY_TYPES
from mrnet.mura.config import SynthesizeConfig

log = logging.getLogger(__name__)

# Share of studies per type and abnormal rate per type: roughly MURA's mix (wrist and shoulder
# most common, humerus least; shoulder and humerus most often abnormal, hand least).
TYPE_SHARE = {"XR_ELBOW": 0.14, "XR_FINGER": 0.15, "XR_FOREARM": 0.07, "XR_HAND": 0.16,
              "XR_HUMERUS": 0.06, "XR_SHOULDER": 0.20, "XR_WRIST": 0.22}
ABNORMAL_RATE = {"XR_ELBOW": 0.40, "XR_FINGER": 0.42, "XR_FOREARM": 0.37, "XR_HAND": 0.28,
                 "XR_HUMERUS": 0.48, "XR_SHOULDER": 0.50, "XR_WRIST": 0.38}
FINDINGS = ("fracture", "lucency", "hardware")
# Bones are drawn this much thicker than ANATOMY says, so findings span a few pixels at 64 px.
BONE_SCALE = 1.25
# Chance that a view of an abnormal study shows its finding (at least one always does).
P_VISIBLE = 0.85
# Floor on a finding's size, in pixels of the rendered view: the fracture's gap (its shift 1.5x
# this), the lucency's half-width, a plate 1.2x and a screw 0.8x this wide. Scaled with a thin
# bone alone they were a pixel or two wide and faded when the view is resized for training (a
# 64-px demo keeps about 0.8 of the rendered pixels), and the demo model did not learn them.
MIN_FINDING_PX = 4.0
# Real MURA-v1.1 valid patients are numbered after the train patients.
VALID_PATIENT_START = 11185

# Bones per study type: segments (x0, y0, x1, y1, radius) in limb coordinates, y pointing
# from the proximal (-1) to the distal (+1) end.
Bone = tuple[float, float, float, float, float]
ANATOMY: dict[str, list[Bone]] = {
    "XR_HUMERUS": [(0.0, -0.95, 0.0, 0.95, 0.17)],
    "XR_FOREARM": [(-0.17, -0.95, -0.13, 0.95, 0.10), (0.17, -0.95, 0.13, 0.95, 0.09)],
    "XR_ELBOW": [(0.0, -0.95, 0.0, -0.05, 0.16), (-0.05, 0.05, -0.30, 0.95, 0.09),
                 (0.08, 0.05, 0.25, 0.95, 0.08)],
    "XR_SHOULDER": [(0.10, -0.40, 0.12, -0.30, 0.30), (0.12, -0.30, 0.22, 0.95, 0.16),
                    (-0.95, -0.65, -0.05, -0.75, 0.08)],
    "XR_WRIST": [(-0.17, 0.95, -0.13, 0.20, 0.12), (0.17, 0.95, 0.14, 0.25, 0.08),
                 (-0.18, 0.00, -0.05, 0.02, 0.08), (0.05, 0.00, 0.18, -0.02, 0.08),
                 (-0.12, -0.22, 0.12, -0.24, 0.08), (-0.28, -0.42, -0.36, -0.95, 0.06),
                 (0.00, -0.42, 0.00, -0.95, 0.06), (0.28, -0.42, 0.36, -0.95, 0.06)],
    "XR_HAND": [(-0.45, 0.70, -0.60, -0.10, 0.06), (-0.20, 0.75, -0.25, -0.20, 0.06),
                (0.02, 0.75, 0.02, -0.25, 0.06), (0.24, 0.75, 0.28, -0.20, 0.06),
                (0.44, 0.70, 0.55, -0.10, 0.06), (-0.25, -0.28, -0.28, -0.90, 0.05),
                (0.02, -0.33, 0.02, -0.95, 0.05), (0.28, -0.28, 0.32, -0.90, 0.05)],
    "XR_FINGER": [(0.0, 0.95, 0.0, 0.32, 0.12), (0.0, 0.24, 0.0, -0.28, 0.11),
                  (0.0, -0.36, 0.0, -0.80, 0.10)],
}


@dataclass
class Finding:
    kind: str
    bone: int  # index into the study's bones
    t: float  # position along the bone, 0 (start) to 1 (end)
    angle: float  # fracture line or screw direction relative to the bone's normal, radians


@dataclass
class Study:
    study_type: str
    label: int
    bones: np.ndarray  # (n, 5)
    finding: Finding | None


def _capsule_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every point (px, py) to the segment a-b."""
    d = b - a
    denom = float(d @ d) or 1e-12
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / denom, 0.0, 1.0)
    return np.hypot(px - (a[0] + t * d[0]), py - (a[1] + t * d[1]))


def _line_distance(px: np.ndarray, py: np.ndarray, p: np.ndarray, direction: np.ndarray,
                   half_length: float) -> np.ndarray:
    return _capsule_distance(px, py, p - half_length * direction, p + half_length * direction)


def _break_bone(bones: np.ndarray, f: Finding, min_size: float = 0.0) -> np.ndarray:
    """The bones with bone ``f.bone`` broken at ``f.t``: a gap, and the distal fragment shifted
    sideways and tilted (a displaced fracture); gap and shift are at least ``min_size`` (limb
    units)."""
    b = bones[f.bone]
    a, e, r = b[0:2], b[2:4], b[4]
    length = float(np.linalg.norm(e - a)) or 1.0
    axis = (e - a) / length
    normal = np.array([-axis[1], axis[0]])
    point = a + f.t * (e - a)
    gap = max(0.5 * r, min_size)
    shift = max(0.8 * r, 1.5 * min_size) * (1.0 if f.angle >= 0 else -1.0)
    ca, sa = math.cos(f.angle * 0.5), math.sin(f.angle * 0.5)
    rest = (1.0 - f.t) * length - gap
    direction = ca * axis + sa * normal
    start = point + gap * axis + shift * normal
    proximal = np.array([*a, *(point - 0.5 * gap * axis), r])
    distal = np.array([*start, *(start + rest * direction), r])
    out = np.delete(bones, f.bone, axis=0)
    return np.vstack([out, proximal, distal])


def draw_study(rng: np.random.Generator, study_type: str, label: int) -> Study:
    """The anatomy of one study (jittered bones) and its finding if abnormal."""
    bones = np.array(ANATOMY[study_type], dtype=np.float64)
    bones[:, :4] += rng.uniform(-0.04, 0.04, size=(len(bones), 4))
    bones[:, 4] *= rng.uniform(0.85, 1.15) * BONE_SCALE
    finding = None
    if label:
        # Findings go in bones long enough to hold them (not the round humeral head).
        lengths = np.hypot(bones[:, 2] - bones[:, 0], bones[:, 3] - bones[:, 1])
        candidates = np.flatnonzero(lengths > 0.3)
        finding = Finding(kind=FINDINGS[rng.integers(len(FINDINGS))],
                          bone=int(rng.choice(candidates)), t=float(rng.uniform(0.25, 0.75)),
                          angle=float(rng.uniform(-0.5, 0.5)))
    return Study(study_type, label, bones, finding)


def render_view(rng: np.random.Generator, study: Study, height: int, width: int,
                show_finding: bool) -> np.ndarray:
    """One view of ``study`` as float (H, W) in [0, 1]."""
    # Pixel centres in view coordinates: the shorter side spans [-1, 1].
    half = min(height, width) / 2.0
    vy, vx = np.mgrid[0:height, 0:width].astype(np.float64)
    vx = (vx + 0.5 - width / 2.0) / half
    vy = (vy + 0.5 - height / 2.0) / half
    # The view: rotation, scale, shift and side; the inverse maps pixels into limb coordinates.
    theta = rng.uniform(-0.45, 0.45) + (math.pi / 2 if rng.random() < 0.2 else 0.0)
    scale = rng.uniform(0.75, 1.0)
    shift = rng.uniform(-0.12, 0.12, size=2)
    side = -1.0 if rng.random() < 0.5 else 1.0
    c, s = math.cos(theta), math.sin(theta)
    ux, uy = (vx - shift[0]) / scale, (vy - shift[1]) / scale
    px, py = side * (c * ux + s * uy), -s * ux + c * uy
    px_per_unit = half * scale
    width_k = rng.uniform(0.85, 1.15)  # AP and lateral projections show bones wider or narrower
    bones = study.bones.copy()
    bones[:, 4] *= width_k

    f = study.finding
    shown = f if (f is not None and show_finding) else None
    if shown is not None and shown.kind == "fracture":
        bones = _break_bone(bones, shown, MIN_FINDING_PX / px_per_unit)
    img = np.full((height, width), rng.uniform(0.02, 0.10))
    dist = [_capsule_distance(px, py, b[0:2], b[2:4]) for b in bones]
    soft = np.min([d - (2.0 * b[4] + 0.12) for d, b in zip(dist, bones)], axis=0)
    img = np.where(soft < 0, rng.uniform(0.22, 0.32), img)
    # Gas bubbles in the soft tissue: dark round spots outside bone, in every kind of study.
    in_bone = np.min([d - b[4] for d, b in zip(dist, bones)], axis=0) < 0
    for _ in range(rng.integers(0, 3)):
        b = bones[rng.integers(len(bones))]
        t = rng.uniform(0.1, 0.9)
        centre = b[0:2] + t * (b[2:4] - b[0:2])
        normal = np.array([-(b[3] - b[1]), b[2] - b[0]])
        normal /= np.linalg.norm(normal) or 1.0
        centre = centre + normal * b[4] * rng.uniform(1.3, 1.9) * (1 if rng.random() < .5 else -1)
        r = b[4] * rng.uniform(0.35, 0.6)
        spot = np.hypot(px - centre[0], py - centre[1]) < r
        img = np.where(spot & (soft < 0) & ~in_bone, img * 0.35, img)
    cortex_level, medulla_level = rng.uniform(0.78, 0.9), rng.uniform(0.52, 0.64)
    for d, b in zip(dist, bones):
        cortex = max(b[4] * 0.3, 1.2 / px_per_unit)
        img = np.where(d < b[4], np.maximum(img, medulla_level), img)
        img = np.where((d < b[4]) & (d > b[4] - cortex), np.maximum(img, cortex_level), img)

    if shown is not None and shown.kind != "fracture":  # a fracture is the broken bone itself
        f = shown
        b = bones[f.bone]
        a, e = b[0:2], b[2:4]
        axis = (e - a) / (np.linalg.norm(e - a) or 1.0)
        normal = np.array([-axis[1], axis[0]])
        point = a + f.t * (e - a)
        inside = dist[f.bone] < b[4]
        floor = MIN_FINDING_PX / px_per_unit
        if f.kind == "lucency":
            r = max(0.9 * b[4], floor)
            rel_x, rel_y = px - point[0], py - point[1]
            along = rel_x * axis[0] + rel_y * axis[1]
            across = rel_x * normal[0] + rel_y * normal[1]
            blob = (along / (2.0 * r)) ** 2 + (across / r) ** 2 < 1.0
            img = np.where(inside & blob, 0.25 * img, img)
        else:  # hardware: a plate along the bone and screws through it, brighter than bone
            plate = _capsule_distance(px, py, point - 0.28 * axis + 0.9 * b[4] * normal,
                                      point + 0.28 * axis + 0.9 * b[4] * normal)
            screws = np.min([_line_distance(px, py, point + k * axis, normal, 1.1 * b[4])
                             for k in (-0.18, 0.0, 0.18)], axis=0)
            metal = (plate < max(0.6 * floor, 0.28 * b[4])) | (
                screws < max(0.4 * floor, 0.12 * b[4]))
            img = np.where(metal, 1.0, img)

    # A laterality marker in a corner, as bright as metal and up to a plate's size.
    if rng.random() < 0.75:
        size = int(round(min(height, width) * rng.uniform(0.06, 0.16)))
        y0 = int(rng.integers(1, max(2, height // 6)))
        x0 = int(rng.integers(1, max(2, width // 6)))
        if rng.random() < 0.5:
            x0 = width - x0 - size
        img[y0:y0 + size, max(0, x0):max(0, x0) + size] = 1.0
    # Collimation: the film outside the beam stays light.
    if rng.random() < 0.35:
        m = rng.uniform(0.04, 0.15, size=4)
        light = rng.uniform(0.55, 0.8)
        frame = ((vy < -height / half / 2 * (1 - 2 * m[0])) | (vy > height / half / 2 * (1 - 2 * m[1]))
                 | (vx < -width / half / 2 * (1 - 2 * m[2])) | (vx > width / half / 2 * (1 - 2 * m[3])))
        img = np.where(frame, light, img)
    # Exposure and detector: gamma, gain, offset, noise.
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    img = img * rng.uniform(0.7, 1.15) + rng.uniform(-0.05, 0.12)
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.05), size=img.shape)
    return np.clip(img, 0.0, 1.0)


def _study_types(rng: np.random.Generator, n: int) -> list[str]:
    """Every type once (n >= 7), the rest drawn with MURA's mix."""
    share = np.array([TYPE_SHARE[t] for t in STUDY_TYPES])
    rest = rng.choice(len(STUDY_TYPES), size=n - len(STUDY_TYPES), p=share / share.sum())
    types = list(STUDY_TYPES) + [STUDY_TYPES[i] for i in rest]
    return [types[i] for i in rng.permutation(n)]


def _labels(rng: np.random.Generator, types: list[str]) -> list[int]:
    """Abnormal labels at each type's rate; every type gets both labels when it has two studies."""
    labels = [int(rng.random() < ABNORMAL_RATE[t]) for t in types]
    for t in STUDY_TYPES:
        idx = [i for i, ty in enumerate(types) if ty == t]
        if len(idx) >= 2 and len({labels[i] for i in idx}) == 1:
            labels[idx[0]] = 1 - labels[idx[0]]
    return labels


def generate(root: str | Path, cfg: SynthesizeConfig) -> dict[str, int]:
    """Write a synthetic MURA-v1.1 dataset at ``root`` (replacing it); returns counts per split.

    Written into a temporary sibling folder renamed onto ``root`` at the end, so a killed run
    leaves the previous dataset (or none), never half of one.
    """
    with atomic_dir(root) as tmp:
        return _write_dataset(tmp, cfg)


def _write_dataset(root: Path, cfg: SynthesizeConfig) -> dict[str, int]:
    counts = {}
    patient = 1
    for split, n in (("train", cfg.n_train), ("valid", cfg.n_valid)):
        rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1])
        if split == "valid":
            patient = max(patient, VALID_PATIENT_START)
        types = _study_types(rng, n)
        # Patients: one study, sometimes two of the same type (study1, study2), as in MURA.
        study_no = []
        for i in range(n):
            second = (i > 0 and study_no[-1] == 1 and rng.random() < 0.15
                      and types.count(types[i]) > 1)
            if second:
                types[i] = types[i - 1]
            study_no.append(2 if second else 1)
        labels = _labels(rng, types)
        image_rows, study_rows = [], []
        n_images = 0
        for i in tqdm(range(n), desc=f"synthesize {split}", unit="study", leave=False):
            if study_no[i] == 1 and i > 0:
                patient += 1
            study = draw_study(rng, types[i], labels[i])
            name = f"study{study_no[i]}_{'positive' if labels[i] else 'negative'}"
            rel = f"{types[i]}/patient{patient:05d}/{name}"
            folder = root / split / rel
            folder.mkdir(parents=True)
            n_views = int(rng.integers(cfg.views_min, cfg.views_max + 1))
            visible = rng.random(n_views) < P_VISIBLE
            if labels[i] and not visible.any():
                visible[rng.integers(n_views)] = True
            for v in range(n_views):
                h = int(round(cfg.image_size * rng.uniform(0.8, 1.25)))
                w = int(round(cfg.image_size * rng.uniform(0.8, 1.25)))
                grey = np.round(255 * render_view(rng, study, h, w, bool(visible[v])))
                grey = grey.astype(np.uint8)
                if rng.random() < cfg.rgb_fraction:
                    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
                else:
                    image = Image.fromarray(grey, "L")
                image.save(folder / f"image{v + 1}.png")
                image_rows.append(f"{DATASET_NAME}/{split}/{rel}/image{v + 1}.png")
                n_images += 1
            study_rows.append(f"{DATASET_NAME}/{split}/{rel}/,{labels[i]}")
        patient += 1
        (root / f"{split}_image_paths.csv").write_text("\n".join(image_rows) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(study_rows) + "\n")
        counts[split] = n
        log.info("%s: %d studies (%d abnormal), %d images", split, n, sum(labels), n_images)
    return counts
