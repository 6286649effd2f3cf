"""Synthetic knee phantoms written in the MRNet-v1.0 layout.

A fresh clone has no MRNet data (it is gated), so the pipeline runs on phantoms that share the
contract of the real data: the folder layout, header-less label CSVs, uint8 ``(slices, H, W)``
volumes with slice counts that vary per exam and plane, and MRNet's label structure.

Each exam is one 3-D knee, sampled as three series (axial, coronal, sagittal), each in its own
"sequence" contrast. The anatomy (femur, tibia, patella with dark cortex and grey marrow, a
notch with the dark ACL and PCL, dark meniscal wedges at the joint line, joint fluid, fat,
muscle and a popliteal vessel) varies per exam in size, position and rotation. The findings are
local structures:

- oedema (abnormal): a bright blob inside bone marrow, seen in every plane;
- ACL tear: the ligament's middle replaced by a bright fluid blob, clear in sagittal, weaker in
  coronal and axial;
- meniscal tear: a bright cleft in a meniscal horn, clear in sagittal, weaker in coronal and
  axial.

So that a model must learn shapes and places, not global brightness, per-series nuisance
(intensity gain and offset, bias field, noise level, effusion volume) dominates each volume's
global statistics, and every exam has a random number of benign bright spots and bursae in the
soft tissue, as bright as a lesion and up to a lesion's size, so neither the mean nor the bright
tail of the histogram gives a finding away. The test suite checks that a logistic regression on
per-volume statistics (mean, std, slice count; also median, 99th percentile and max) stays near
chance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mrnet import PLANES, SPLITS, TASKS
from mrnet.config import SynthesizeConfig
from mrnet.core import provenance
from mrnet.core.io import atomic_dir

log = logging.getLogger(__name__)

# MRNet-v1.0 prevalences (SPEC.md); the valid split is enriched for tears.
PREVALENCE: dict[str, dict[str, float]] = {
    "train": {"abnormal": 0.808, "acl": 0.184, "meniscus": 0.351},
    "valid": {"abnormal": 0.792, "acl": 0.450, "meniscus": 0.433},
}

# Real MRNet valid ids start at 1130, right after its 1,130 train exams.
MRNET_VALID_START = 1130

# How strongly each finding shows in each plane's sequence (alpha of the lesion paint). Tears
# are clearest in sagittal. Below 0.9 a weaker plane's tear is not learnable from ~30 positive
# exams in the demo's 10 epochs at 64 px: at 0.3 (ACL) and 0.35 (meniscus), as these once were,
# the axial CNNs never left the constant-output loss; at 0.75 the ACL axial one needed 13.
VISIBILITY: dict[str, dict[str, float]] = {
    "oedema": {"axial": 0.9, "coronal": 1.0, "sagittal": 1.0},
    "acl": {"axial": 0.9, "coronal": 0.9, "sagittal": 1.0},
    "meniscus": {"axial": 0.9, "coronal": 0.9, "sagittal": 1.0},
}

# Tissue intensities in [0, 1] per plane: each plane is its own sequence, as in MRNet, and the
# fat-suppressed sagittal one makes fluid stand out most. Lesions are the brightest tissue in
# every plane; at 64 px and ~30 positives a from-scratch CNN does not pick up lesions that are
# only a little brighter than the fat or fluid around them.
TISSUE: dict[str, dict[str, float]] = {
    "sagittal": dict(fat=0.32, muscle=0.28, marrow=0.30, cortex=0.05, fluid=0.55,
                     ligament=0.07, meniscus=0.05, vessel=0.50, spot=0.90, lesion=1.0),
    "coronal": dict(fat=0.48, muscle=0.30, marrow=0.40, cortex=0.06, fluid=0.50,
                    ligament=0.08, meniscus=0.06, vessel=0.45, spot=0.90, lesion=1.0),
    "axial": dict(fat=0.50, muscle=0.33, marrow=0.42, cortex=0.06, fluid=0.55,
                  ligament=0.09, meniscus=0.06, vessel=0.50, spot=0.90, lesion=1.0),
}

# Half-extent of each series along its slice axis, in field-of-view units ([-1, 1] in-plane):
# like a real series it covers the joint, not the whole leg.
SLICE_EXTENT: dict[str, float] = {"sagittal": 0.75, "coronal": 0.65, "axial": 0.72}

# Chance that an exam with a tear also has a bone bruise (oedema).
P_OEDEMA_WITH_TEAR = 0.4

Vec = tuple[float, float, float]
Field = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- labels


def draw_labels(n: int, rng: np.random.Generator, split: str = "train") -> dict[str, np.ndarray]:
    """Draw MRNet-like labels for ``n`` exams.

    The number of positives of each task is the split's prevalence times ``n`` (rounded), so
    small splits keep the real proportions. ACL and meniscus positives are drawn among the
    abnormal exams, so every tear is abnormal.

    Args:
        n: number of exams.
        rng: generator all draws come from.
        split: ``"train"`` or ``"valid"``; picks the prevalence table.

    Returns:
        {task: int64 array of 0/1 of length n} for every task in ``TASKS``.
    """
    if split not in PREVALENCE:
        raise ValueError(f"split must be one of {', '.join(PREVALENCE)}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    prev = PREVALENCE[split]
    n_abn = int(round(prev["abnormal"] * n))
    abnormal = np.zeros(n, dtype=np.int64)
    abnormal[rng.permutation(n)[:n_abn]] = 1
    idx_abn = np.flatnonzero(abnormal)
    labels = {"abnormal": abnormal}
    for task in ("acl", "meniscus"):
        k = min(int(round(prev[task] * n)), n_abn)
        lab = np.zeros(n, dtype=np.int64)
        lab[rng.permutation(idx_abn)[:k]] = 1
        labels[task] = lab
    return {t: labels[t] for t in TASKS}


def case_ids(cfg: SynthesizeConfig) -> dict[str, list[str]]:
    """The 4-digit case ids of each split: train from 0000, valid from 1130 (or after train)."""
    valid_start = max(MRNET_VALID_START, cfg.n_train)
    return {
        "train": [f"{i:04d}" for i in range(cfg.n_train)],
        "valid": [f"{i:04d}" for i in range(valid_start, valid_start + cfg.n_valid)],
    }


def split_labels(cfg: SynthesizeConfig) -> dict[str, dict[str, np.ndarray]]:
    """Labels of each split, drawn from a generator seeded by ``cfg.seed`` and the split."""
    sizes = {"train": cfg.n_train, "valid": cfg.n_valid}
    out = {}
    for k, split in enumerate(SPLITS):
        # A fixed tag keeps the label stream apart from the per-exam streams.
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x1ABE1, k]))
        out[split] = draw_labels(sizes[split], rng, split)
    return out


# ----------------------------------------------------------------------------- geometry


def _ramp(f: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-mask of a signed distance ``f`` (< 0 inside), one ``edge`` wide."""
    return np.clip(0.5 - f / edge, 0.0, 1.0)


# Field parameters are cast to Python floats: a numpy float64 scalar would promote the
# float32 coordinate arrays to float64 and double the rendering time.


def _ellipsoid(c: Vec, r: Vec) -> Field:
    cx, cy, cz = map(float, c)
    rx, ry, rz = map(float, r)
    s = min(rx, ry, rz)

    def f(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        n = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
        return (n - 1.0) * s
    return f


def _cylinder(rx: float, ry: float) -> Field:
    """An elliptic cylinder along z through the origin (the leg)."""
    rx, ry = float(rx), float(ry)
    s = min(rx, ry)

    def f(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (np.sqrt((x / rx) ** 2 + (y / ry) ** 2) - 1.0) * s
    return f


def _capsule(a: Vec, b: Vec, radius: float) -> Field:
    ax, ay, az = map(float, a)
    dx, dy, dz = (float(q - p) for p, q in zip(a, b))
    dd = dx * dx + dy * dy + dz * dz
    radius = float(radius)

    def f(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        px, py, pz = x - ax, y - ay, z - az
        t = np.clip((px * dx + py * dy + pz * dz) / dd, 0.0, 1.0)
        return np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2 + (pz - t * dz) ** 2) - radius
    return f


def _union(*fields: Field) -> Field:
    def f(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = fields[0](x, y, z)
        for g in fields[1:]:
            out = np.minimum(out, g(x, y, z))
        return out
    return f


def _meniscus(cx: float, cy: float, rx: float, ry: float, z0: float, height: float) -> Field:
    """A C-shaped wedge ring: thin at its inner rim, ``height`` tall at its outer rim."""
    cx, cy, rx, ry, z0, height = map(float, (cx, cy, rx, ry, z0, height))

    def f(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        top = z0 + height * np.clip((rho - 0.5) / 0.5, 0.0, 1.0)
        s = min(rx, ry)
        return np.maximum.reduce([(rho - 1.0) * s, (0.5 - rho) * s, z0 - z, z - top])
    return f


@dataclass
class _Shape:
    """A field with a bounding sphere (knee units) so it is evaluated only near itself."""

    field: Field
    center: Vec
    radius: float


@dataclass
class _Layer:
    """Paint tissues into ``shape``: each band ``(inset, tissue)`` fills the shape shrunk by
    ``inset``, in order (e.g. cortex, then marrow one cortex thickness inside), with opacity
    ``alpha``. ``inside`` (optional) clips the paint to another shape shrunk by
    ``inside_inset`` (oedema only within marrow). One field evaluation serves all bands.
    """

    shape: _Shape
    bands: tuple[tuple[float, str], ...]
    alpha: float = 1.0
    inside: _Shape | None = None
    inside_inset: float = 0.0


@dataclass
class Knee:
    """One exam's anatomy and findings, in knee units, plus its pose in the scanner."""

    layers: list[_Layer] = field(default_factory=list)
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.float32))
    scale: float = 1.0
    # layer index -> finding name, for per-plane visibility
    findings: dict[int, str] = field(default_factory=dict)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def draw_knee(rng: np.random.Generator, labels: dict[str, int]) -> Knee:
    """Draw one exam's anatomy, nuisance and lesions (knee axes: x lateral, y anterior, z up)."""
    u = rng.uniform
    knee = Knee(rotation=_rotation(rng, 7.0),
                 shift=u(-0.09, 0.09, 3).astype(np.float32),
                 scale=float(u(1.08, 1.36)))
    L = knee.layers

    def add(shape: _Shape, tissue: str | tuple[tuple[float, str], ...], **kw) -> int:
        bands = ((0.0, tissue),) if isinstance(tissue, str) else tissue
        L.append(_Layer(shape, bands, **kw))
        return len(L) - 1

    # Leg: subcutaneous fat around muscle.
    lrx, lry = u(0.66, 0.78), u(0.6, 0.72)
    fat_t = u(0.05, 0.12)
    add(_Shape(_cylinder(lrx, lry), (0, 0, 0), 9.0), ((0.0, "fat"), (fat_t, "muscle")))

    # Small benign bright spots in soft tissue (veins, small cysts) in random number: as bright
    # as a lesion, so neither total brightness nor the brightest voxel tells a finding apart,
    # but small, so size and place still do.
    for _ in range(rng.poisson(4.0)):
        ang, rad = u(0, 2 * np.pi), u(0.5, 0.9)
        c = (rad * lrx * np.cos(ang), rad * lry * np.sin(ang), u(-0.7, 0.7))
        r = tuple(u(0.025, 0.06, 3))
        add(_Shape(_ellipsoid(c, r), c, max(r)), "spot")
    # Fluid-filled bursae near the skin, as bright as a lesion and of a lesion's size, in
    # random number: without them the volume of bright voxels (a high percentile) would give
    # the findings away.
    for _ in range(rng.poisson(2.5)):
        ang, rad = u(0, 2 * np.pi), u(0.72, 0.92)
        c = (rad * lrx * np.cos(ang), rad * lry * np.sin(ang), u(-0.6, 0.6))
        r = tuple(u(0.07, 0.18, 3))
        add(_Shape(_ellipsoid(c, r), c, max(r)), "spot")
    # Popliteal vessel behind the joint.
    vx, vy = u(-0.08, 0.08), u(-0.52, -0.42)
    vr = u(0.035, 0.06)
    add(_Shape(_ellipsoid((vx, vy, 0.0), (vr, vr, 6.0)), (vx, vy, 0.0), 9.0), "vessel")

    # Joint effusion and suprapatellar pouch; volume varies a lot between knees.
    eff = u(0.5, 1.15)
    c = (0.0, 0.05, 0.04)
    r = (0.5 * eff, 0.42 * eff, 0.15 * eff)
    add(_Shape(_ellipsoid(c, r), c, max(r)), "fluid")
    c = (0.0, 0.36, 0.42)
    r = (0.28 * eff, 0.07 * eff, 0.22 * eff)
    add(_Shape(_ellipsoid(c, r), c, max(r)), "fluid")

    # Bone, meniscus and ligament sizes.
    cond_x = u(0.19, 0.24)
    cond_r = (u(0.17, 0.2), u(0.28, 0.34), u(0.18, 0.22))
    z_tib = -0.07
    men_h = u(0.12, 0.16, 2)
    cort = u(0.025, 0.04)
    shaft_r = u((0.24, 0.22, 0.42, 0.3, 0.22, 0.2), (0.28, 0.26, 0.47, 0.34, 0.26, 0.24))
    pc = (0.0, u(0.46, 0.52), u(0.22, 0.3))
    pr = (u(0.15, 0.19), u(0.07, 0.09), u(0.14, 0.17))
    lig_r = u(0.045, 0.055)

    # Lesion parameters are drawn for every exam, whatever its labels, so the same case id
    # gives the same knee with or without a finding.
    men_tear = dict(amp=u(0.75, 1.0), side=-1.0 if u() < 0.7 else 1.0,
                    horn=-1.0 if u() < 0.75 else 1.0,
                    dx=u(-0.04, 0.04), dy=u(0.7, 0.85), dz=u(0.02, 0.05),
                    r=tuple(u((0.12, 0.09, 0.06), (0.16, 0.12, 0.08))),
                    cyst_dx=u(-0.06, 0.06), cyst_r=tuple(u(0.08, 0.11, 3)))
    acl_tear = dict(amp=u(0.6, 1.0), t0=u(0.15, 0.4), t1=u(0.6, 0.85), r=u(0.065, 0.1))
    oed = dict(amp=u(0.6, 1.0), bruise=u() < P_OEDEMA_WITH_TEAR, femur=u() < 0.55,
               side=-1.0 if u() < 0.5 else 1.0, dx=u(-0.05, 0.05), y=u(-0.15, 0.15),
               z_fem=u(0.1, 0.22), z_tib=u(-0.3, -0.16), r=tuple(u(0.12, 0.19, 3)))

    # Menisci: medial (x < 0) and lateral wedges in the joint space, painted under the bones.
    for k, side in enumerate((-1.0, 1.0)):
        c = (side * cond_x, -0.02, z_tib)
        add(_Shape(_meniscus(c[0], c[1], cond_r[0] * 1.05, cond_r[1] * 1.05, z_tib - 0.02,
                             men_h[k]), c, 0.4), "meniscus")

    # Bones: cortex (dark rim) then marrow (inset by the cortex thickness).
    femur = _Shape(_union(
        _ellipsoid((-cond_x, -0.02, 0.2), cond_r),
        _ellipsoid((cond_x, -0.02, 0.2), cond_r),
        _ellipsoid((0, -0.02, 0.95), (shaft_r[0], shaft_r[1], 0.8)),
    ), (0, 0, 0.6), 1.0)
    tibia = _Shape(_union(
        _ellipsoid((0, 0.0, -0.32), (shaft_r[2], shaft_r[3], 0.25)),
        _ellipsoid((0, -0.02, -1.0), (shaft_r[4], shaft_r[5], 0.8)),
    ), (0, 0, -0.7), 1.0)
    patella = _Shape(_ellipsoid(pc, pr), pc, max(pr))
    for bone in (femur, tibia, patella):
        add(bone, ((0.0, "cortex"), (cort, "marrow")))

    if labels["meniscus"]:
        # A bright horizontal cleft through a horn (posterior horn of the medial meniscus most
        # often), painted over the bone edges, and the fluid it lets out: a parameniscal cyst at
        # the horn's outer rim. The cleft is 4-5 px tall at 64 px: at 3 px (half-height 0.045-0.06)
        # the meniscus ensemble's valid AUC was 0.93 +- 0.02 over seeds and 7% of its valid calls
        # differed between a bf16 and an fp32 run of the same seed; at this height 0.98 +- 0.01
        # and 2.5% (the meniscus CNNs alone, seeds 0-2).
        m = men_tear
        cx, cy = m["side"] * cond_x, -0.02 + m["horn"] * cond_r[1] * m["dy"]
        c = (cx + m["dx"], cy, z_tib + m["dz"])
        i = add(_Shape(_ellipsoid(c, m["r"]), c, max(m["r"])), "lesion", alpha=m["amp"])
        knee.findings[i] = "meniscus"
        c = (cx + m["cyst_dx"], -0.02 + m["horn"] * cond_r[1] * 1.12, z_tib + 0.03)
        i = add(_Shape(_ellipsoid(c, m["cyst_r"]), c, max(m["cyst_r"])), "lesion",
                alpha=m["amp"])
        knee.findings[i] = "meniscus"

    # Intercondylar notch (fat) carved out of the femur, then the cruciate ligaments and the
    # patellar tendon, with Hoffa's fat pad behind the tendon.
    c = (0.0, -0.06, 0.1)
    r = (0.075, 0.26, 0.15)
    add(_Shape(_ellipsoid(c, r), c, max(r)), "fat")
    c = (0.0, 0.34, -0.02)
    r = (0.16, 0.1, 0.1)
    add(_Shape(_ellipsoid(c, r), c, max(r)), "fat")
    add(_Shape(_capsule((0, pc[1] + 0.02, pc[2] - pr[2]), (0, 0.3, -0.38), 0.035),
               (0, 0.4, 0), 0.45), "ligament")
    acl_a = (0.04, -0.16, 0.17)
    acl_b = (-0.02, 0.1, -0.06)
    add(_Shape(_capsule(acl_a, acl_b, lig_r), (0.01, -0.03, 0.05), 0.25), "ligament")
    add(_Shape(_capsule((-0.04, 0.08, 0.17), (0.0, -0.22, -0.1), lig_r * 1.2),
               (-0.02, -0.07, 0.03), 0.25), "ligament")
    if labels["acl"]:
        # The torn middle of the ACL replaced by a thicker streak of fluid along its course.
        t0, t1 = acl_tear["t0"], acl_tear["t1"]
        a = tuple(p + t0 * (q - p) for p, q in zip(acl_a, acl_b))
        b = tuple(p + t1 * (q - p) for p, q in zip(acl_a, acl_b))
        c = tuple((p + q) / 2 for p, q in zip(a, b))
        half = float(np.linalg.norm(np.subtract(b, a))) / 2
        i = add(_Shape(_capsule(a, b, acl_tear["r"]), c, half + acl_tear["r"]), "lesion",
                alpha=acl_tear["amp"])
        knee.findings[i] = "acl"

    # Bone marrow oedema: obligatory for abnormal exams without a tear (so "abnormal" has a
    # finding), a frequent bone bruise with a tear.
    tear = labels["acl"] or labels["meniscus"]
    if labels["abnormal"] and (not tear or oed["bruise"]):
        bone = femur if oed["femur"] else tibia
        c = (oed["side"] * cond_x + oed["dx"], oed["y"],
             oed["z_fem"] if oed["femur"] else oed["z_tib"])
        r = oed["r"]
        i = add(_Shape(_ellipsoid(c, r), c, max(r)), "lesion", alpha=oed["amp"], inside=bone,
                inside_inset=cort)
        knee.findings[i] = "oedema"
    return knee


# ----------------------------------------------------------------------------- rendering


def axis_coords(n: int, half: float) -> np.ndarray:
    """Centres of ``n`` cells spanning [-half, half]."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0) * half


# Scanner axes (0 = x lateral, 1 = y anterior, 2 = z up) of each plane's (slice, row, col),
# and the sign of each: rows run top-down, so superior/anterior comes first.
PLANE_AXES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "sagittal": ((0, 2, 1), (1.0, -1.0, 1.0)),
    "coronal": ((1, 2, 0), (1.0, -1.0, 1.0)),
    "axial": ((2, 1, 0), (-1.0, -1.0, 1.0)),
}


def scanner_axes(plane: str, n_slices: int, size: int) -> list[np.ndarray]:
    """1-D scanner coordinates of each array axis of a ``plane`` series (the grid is
    separable in the scanner frame)."""
    _, signs = PLANE_AXES[plane]
    shape = (n_slices, size, size)
    halves = (SLICE_EXTENT[plane], 1.0, 1.0)
    return [s * axis_coords(n, h) for n, h, s in zip(shape, halves, signs)]


def knee_coords(knee: Knee, plane: str, n_slices: int, size: int) -> list[np.ndarray]:
    """Knee-frame coordinates (x, y, z) of every voxel of a ``plane`` series, each array
    broadcastable to (n_slices, size, size)."""
    axes, _ = PLANE_AXES[plane]
    shape = (n_slices, size, size)
    axis_c = scanner_axes(plane, n_slices, size)
    scanner: list = [None, None, None]
    for k, ax in enumerate(axes):
        view = [1, 1, 1]
        view[k] = shape[k]
        scanner[ax] = axis_c[k].reshape(view)
    # Knee coordinates of every voxel: q = R^T (p - t) / s.
    rt = knee.rotation.T / knee.scale
    p = [scanner[i] - knee.shift[i] for i in range(3)]
    return [rt[i, 0] * p[0] + rt[i, 1] * p[1] + rt[i, 2] * p[2] for i in range(3)]


def render_plane(knee: Knee, plane: str, n_slices: int, size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Sample ``knee`` as one series of ``plane`` and return it as uint8 (slices, size, size)."""
    axes, _ = PLANE_AXES[plane]
    shape = (n_slices, size, size)
    axis_c = scanner_axes(plane, n_slices, size)
    q = [c.astype(np.float32) for c in knee_coords(knee, plane, n_slices, size)]
    edge = 2.0 / size / knee.scale  # one pixel, in knee units
    tissue = TISSUE[plane]
    img = np.zeros(shape, np.float32)

    def block(shp: _Shape) -> tuple[slice, slice, slice]:
        """Index box of the voxels within ``shp``'s bounding sphere (plus a margin)."""
        c = knee.rotation @ np.asarray(shp.center, np.float32) * knee.scale + knee.shift
        r = shp.radius * knee.scale + 2.0 / size
        box = []
        for k, ax in enumerate(axes):
            hit = np.flatnonzero(np.abs(axis_c[k] - c[ax]) <= r)
            box.append(slice(hit[0], hit[-1] + 1) if hit.size else slice(0, 0))
        return tuple(box)

    for i, layer in enumerate(knee.layers):
        box = block(layer.shape)
        if any(b.stop <= b.start for b in box):
            continue
        x, y, z = (np.broadcast_to(qi, shape)[box] for qi in q)
        f = layer.shape.field(x, y, z)
        clip = None
        if layer.inside is not None:
            clip = _ramp(layer.inside.field(x, y, z) + layer.inside_inset, edge)
        a = layer.alpha
        if i in knee.findings:
            a *= VISIBILITY[knee.findings[i]][plane]
        sub = img[box]  # a view: painting it paints img
        for inset, name in layer.bands:
            alpha = _ramp(f + inset, edge)
            if clip is not None:
                alpha *= clip
            if a != 1.0:
                alpha *= np.float32(a)
            sub += alpha * (tissue[name] - sub)

    # Acquisition nuisance per series: coil bias field, gain, offset and noise level.
    u = rng.uniform
    rows = axis_c[1].reshape(1, -1, 1)
    cols = axis_c[2].reshape(1, 1, -1)
    img *= 1.0 + u(-0.15, 0.15) * rows + u(-0.15, 0.15) * cols
    img *= u(0.6, 1.4)
    img += u(-0.06, 0.1)
    img += rng.standard_normal(shape, dtype=np.float32) * np.float32(u(0.015, 0.06))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_exam(case_index: int, labels: dict[str, int],
                cfg: SynthesizeConfig) -> dict[str, np.ndarray]:
    """Render the three series of one exam.

    Args:
        case_index: the numeric case id; with ``cfg.seed`` it seeds this exam's generator, so
            an exam does not depend on which other exams are generated or in what order.
        labels: {task: 0/1} of this exam.
        cfg: dataset size settings (image size, slice range, seed).

    Returns:
        {plane: uint8 array (slices, image_size, image_size)}.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, case_index]))
    knee = draw_knee(rng, labels)
    out = {}
    for plane in PLANES:
        n_slices = int(rng.integers(cfg.slices_min, cfg.slices_max + 1))
        out[plane] = render_plane(knee, plane, n_slices, cfg.image_size, rng)
    return out


# ----------------------------------------------------------------------------- dataset


def _write_csv(path: Path, ids: list[str], labels: np.ndarray) -> None:
    path.write_text("".join(f"{cid},{int(lab)}\n" for cid, lab in zip(ids, labels)))


# A file in the root of every phantom dataset; real MRNet-v1.0 has none.
PHANTOM_MARKER = provenance.PHANTOM_MARKER


def generate(root: str | Path, cfg: SynthesizeConfig) -> None:
    """Write a phantom dataset in the MRNet-v1.0 layout at ``root``, marked as phantoms by a
    :data:`PHANTOM_MARKER` file in its root.

    Everything is written into a temporary sibling folder that is renamed onto ``root`` at the
    end, so a killed run leaves no half dataset. An existing ``root`` is replaced. The same
    ``cfg`` gives byte-identical files; the global numpy RNG is never used.

    Args:
        root: the dataset folder itself (the one holding ``train/`` and ``valid/``).
        cfg: seed and sizes.
    """
    cfg.check("synthesize")
    root = Path(root)
    ids = case_ids(cfg)
    labels = split_labels(cfg)
    with atomic_dir(root) as tmp:
        for split in SPLITS:
            for plane in PLANES:
                (tmp / split / plane).mkdir(parents=True)
            for task in TASKS:
                _write_csv(tmp / f"{split}-{task}.csv", ids[split], labels[split][task])
        # Models record whether they were trained on phantoms (mrnet.core.provenance), and predict
        # refuses such models on real exams unless told otherwise.
        (tmp / PHANTOM_MARKER).write_text("Synthetic knee phantoms written by mrnet.data.synthetic, "
                                          "not patient data.\n")
        jobs = [(split, k, cid) for split in SPLITS for k, cid in enumerate(ids[split])]
        for split, k, cid in tqdm(jobs, desc="phantoms", unit="exam", leave=False):
            exam = render_exam(int(cid), {t: int(labels[split][t][k]) for t in TASKS}, cfg)
            for plane, vol in exam.items():
                np.save(tmp / split / plane / f"{cid}.npy", vol, allow_pickle=False)
    log.info("wrote %d train and %d valid phantom exams to %s", cfg.n_train, cfg.n_valid, root)
