"""Synthetic knee phantoms written in the KneeMRI layout (see :mod:`mrnet.kneemri.reader`).

The same 3-D knee phantoms as the MRNet stand-in (:mod:`mrnet.data.synthetic`), rendered as one
sagittal series per exam, so a CNN trained on the MRNet phantoms has something to recognise:
an ACL injury is the ligament's middle replaced by a bright fluid streak. A complete rupture
paints that streak at full strength; a partial injury at 35–60 % of it. The files follow the
public dataset exactly: ``metadata.csv`` with its header (rows in shuffled order), folders
``vol01``…``vol10``, one Python-2-style pickle (protocol 2, ``numpy.core.multiarray``) per
series holding 12-bit intensities in a dtype that varies between series (uint16, int16,
int32), a left or right knee (left knees have their slice order reversed), and the ROI box
around the ACL in metadata.

Diagnoses follow KneeMRI's proportions (690 healthy, 172 partial, 55 complete of 917) within
each split, with at least two series of each diagnosis per split so that small phantoms still
have both classes of both tasks everywhere.
"""

from __future__ import annotations

import csv
import logging
import struct
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mrnet.config import KneemriSyntheticConfig
from mrnet.core.io import atomic_dir
from mrnet.data.synthetic import draw_knee, knee_coords, render_plane
from mrnet.kneemri.reader import COLUMNS, SPLIT_FOLDERS

log = logging.getLogger(__name__)

# Share of each aclDiagnosis (0 healthy, 1 partial, 2 complete) in KneeMRI.
DIAGNOSIS_SHARE = {0: 690 / 917, 1: 172 / 917, 2: 55 / 917}
DTYPES = (np.uint16, np.int16, np.int32)
PARTIAL_STRENGTH = (0.35, 0.6)
_TAG = 0x4B4E4545  # keeps these streams apart from the MRNet phantoms' streams


# ----------------------------------------------------------------------------- pickles


def _binstring(data: bytes) -> bytes:
    """A Python 2 byte string (SHORT_BINSTRING or BINSTRING opcode)."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def py2_pickle(arr: np.ndarray) -> bytes:
    """The protocol-2 pickle that Python 2 numpy writes for a C-ordered numeric array.

    ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` rebuilt with the state
    ``(1, shape, numpy.dtype(code, 0, 1), False, raw bytes)``, byte strings as Python 2 ``str``
    (read back with ``encoding="latin1"``). Written by hand because Python 3's pickler
    encodes bytes through ``_codecs.encode`` at protocol 2.
    """
    arr = np.ascontiguousarray(arr)
    dt = arr.dtype
    if dt.byteorder == ">" or dt.kind not in "uif":
        raise ValueError(f"only little-endian numeric arrays, got {dt}")
    order = b"|" if dt.itemsize == 1 else b"<"
    shape = b"(" + b"".join(_int(int(n)) for n in arr.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _binstring(dt.str[1:].encode()) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _binstring(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"\x80\x02" + b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
            + b"K\x00\x85" + _binstring(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + _binstring(arr.tobytes()) + b"tb.")


# ----------------------------------------------------------------------------- phantoms


def split_diagnoses(n: int, rng: np.random.Generator) -> np.ndarray:
    """aclDiagnosis of ``n`` series in KneeMRI's proportions, >= 2 of each, shuffled."""
    if n < 6:
        raise ValueError(f"a split needs at least 6 series (2 per diagnosis), got {n}")
    n2 = max(2, int(round(DIAGNOSIS_SHARE[2] * n)))
    n1 = max(2, int(round(DIAGNOSIS_SHARE[1] * n)))
    n1 = min(n1, n - n2 - 2)
    diag = np.array([0] * (n - n1 - n2) + [1] * n1 + [2] * n2, dtype=np.int64)
    return rng.permutation(diag)


def _sagittal_grid(knee, n_slices: int, size: int) -> list[np.ndarray]:
    """Knee-frame coordinates (x, y, z) of every voxel of a sagittal series, as in
    :func:`mrnet.data.synthetic.render_plane`."""
    shape = (n_slices, size, size)
    return [np.broadcast_to(c, shape) for c in knee_coords(knee, "sagittal", n_slices, size)]


def acl_roi(knee, n_slices: int, size: int) -> tuple[int, int, int, int, int, int]:
    """Bounding box (x, y, z, height, width, depth) of the ACL in a sagittal series.

    The phantom paints three ligaments in the order patellar tendon, ACL, PCL; the ACL is the
    second. Its field is sampled on a grid eight times finer across slices (the ligament is
    thinner than the slice spacing) and at 64 px in-plane, and the box is every series voxel
    whose cell holds part of the ligament.
    """
    ligaments = [layer for layer in knee.layers if layer.bands == ((0.0, "ligament"),)]
    acl = ligaments[1]
    fine, grid = 8, 64
    inside = acl.shape.field(*_sagittal_grid(knee, n_slices * fine, grid)) < 0
    if not inside.any():  # the ACL left the field of view: mark the centre
        c = size // 4
        return (c, c, 0, size // 2, size // 2, n_slices)
    z, y, x = (np.flatnonzero(inside.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    z0, z1 = z[0] // fine, z[-1] // fine
    y0, y1 = (y[0] * size) // grid, -(-(y[-1] + 1) * size // grid) - 1
    x0, x1 = (x[0] * size) // grid, -(-(x[-1] + 1) * size // grid) - 1
    return (int(x0), int(y0), int(z0), int(y1 - y0 + 1), int(x1 - x0 + 1), int(z1 - z0 + 1))


def render_series(index: int, diagnosis: int, cfg: KneemriSyntheticConfig
                  ) -> tuple[np.ndarray, tuple[int, ...], int]:
    """One phantom series: (12-bit volume in its dtype, ROI, kneeLR).

    Args:
        index: the series' number; with ``cfg.seed`` it seeds the series' own generator.
        diagnosis: aclDiagnosis, 0 healthy, 1 partial, 2 complete rupture.
        cfg: sizes and seed.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _TAG, index]))
    injured = int(diagnosis >= 1)
    knee = draw_knee(rng, {"abnormal": injured, "acl": injured, "meniscus": 0})
    strength = float(rng.uniform(*PARTIAL_STRENGTH))
    if diagnosis == 1:
        for i, finding in knee.findings.items():
            if finding == "acl":
                knee.layers[i].alpha *= strength
    n = int(rng.integers(cfg.slices_min, cfg.slices_max + 1))
    img = render_plane(knee, "sagittal", n, cfg.image_size, rng)
    x, y, z, h, w, d = acl_roi(knee, n, cfg.image_size)
    gain, offset = rng.uniform(9.0, 15.0), rng.uniform(0.0, 200.0)
    vol = img.astype(np.float32) * np.float32(gain) + np.float32(offset)
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(2.0)
    knee_lr = int(rng.integers(0, 2))
    if knee_lr == 1:  # the other knee: the same anatomy mirrored across the slices
        vol = vol[::-1]
        z = n - (z + d)
    vol = np.clip(np.rint(vol), 0, 4095).astype(DTYPES[index % len(DTYPES)])
    return vol, (x, y, z, h, w, d), knee_lr


def generate_kneemri(root: str | Path, cfg: KneemriSyntheticConfig) -> None:
    """Write a phantom dataset in the KneeMRI layout at ``root`` (replacing it).

    Written into a temporary sibling renamed onto ``root`` at the end; the same ``cfg`` gives
    byte-identical files, and the global numpy RNG is never used.
    """
    cfg.check("kneemri.synthetic")
    root = Path(root)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _TAG]))
    jobs = []
    for split, folders in SPLIT_FOLDERS.items():
        diagnoses = split_diagnoses(cfg.exams_per_folder * len(folders), rng)
        jobs += [(folders[k % len(folders)], int(d)) for k, d in enumerate(diagnoses)]
    exam_ids = rng.choice(np.arange(100000, 1000000), size=len(jobs), replace=False)
    series_no = rng.integers(1, 16, size=len(jobs))
    rows = []
    with atomic_dir(root) as tmp:
        for f in SPLIT_FOLDERS.values():
            for folder in f:
                (tmp / folder).mkdir(parents=True)
        for index, (folder, diagnosis) in enumerate(tqdm(jobs, desc="kneemri phantoms",
                                                         unit="series", leave=False)):
            vol, roi, knee_lr = render_series(index, diagnosis, cfg)
            name = f"{exam_ids[index]}-{series_no[index]}.pck"
            (tmp / folder / name).write_bytes(py2_pickle(vol))
            x, y, z, h, w, d = roi
            rows.append([int(exam_ids[index]), int(series_no[index]), diagnosis, knee_lr,
                         x, y, z, h, w, d, name])
        order = rng.permutation(len(rows))  # the metadata is not in folder order
        with (tmp / "metadata.csv").open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows[i] for i in order)
    log.info("wrote %d KneeMRI phantom series to %s", len(jobs), root)
