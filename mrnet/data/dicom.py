"""A scanner's DICOM export of one knee exam, turned into the three MRNet series.

A scanner exports one file per slice (or, as Enhanced MR, one multi-frame file per series),
several series per exam (a localizer, the diagnostic series of each plane, sometimes more than
one per plane), with file names that say nothing. :func:`import_exam` reads every file's
header (every frame's, from the per-frame and shared functional groups of a multi-frame file),
groups the slices by series, and for each series

- tells its plane from ``ImageOrientationPatient``: the slice normal (row x column cosines)
  points mostly along the patient's x axis (sagittal), y (coronal) or z (axial);
- ignores it when it is a localizer (``ImageType`` or description), mixes orientations or
  in-plane directions, has fewer than :data:`MIN_SLICES` slices or several images at one
  position;

then picks one series per plane (``--series`` by number or description, else MRNet's
contrast for that plane -- sagittal T2, coronal T1, axial PD (Bien et al. 2018) -- else the
series with most slices), and turns each chosen series into an MRNet ``.npy``:

- slices ordered by their position along the plane's patient axis (``ImagePositionPatient``
  projected on the normal; right to left, anterior to posterior, foot to head), never by file
  name, instance number or frame number;
- ``RescaleSlope``/``RescaleIntercept`` applied per slice;
- turned to the plane's in-plane orientation (:data:`IN_PLANE`: that of the usual display and
  the standard exports), so that an export with mirrored or transposed pixels gives the same
  array;
- a non-square field of view padded to a square (in millimetres), resampled to 256 x 256
  (antialiased bilinear, as the prepare stage resizes);
- intensities windowed to uint8 between the series' 0.5th and 99.5th percentiles. MRNet
  standardised intensities with a histogram method fitted on its own data; a per-series
  percentile window is the reproducible stand-in, and the models scale every exam by its own
  range anyway.

Pixel data may be uncompressed or in any standard still-image syntax (JPEG Baseline, Extended
and Lossless, JPEG-LS, JPEG 2000, RLE), decoded by the project's dependencies.
``OUT_DIR/{axial,coronal,sagittal}.npy`` and ``OUT_DIR/dicom.json`` (what was chosen and why,
what was ignored and why, how each series was turned) are swapped in together, as one folder:
a failed or killed import leaves the earlier import whole. OUT_DIR may be new, empty or an
earlier import; a folder holding anything else is refused rather than replaced. Any problem a
user can meet (missing plane, several studies, a transfer syntax no decoder reads, an Enhanced
MR file whose frames cannot be placed) is a :class:`DicomError` naming the series or file, and
so is anything that would make a volume that is not the exam: a file that cannot be read or is
cut short, a gap or irregular spacing in the chosen series, NaN or inf in its geometry or
rescale, a zero or negative pixel spacing, a matrix too large to allocate (checked on the
headers, before allocating).
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrnet import PLANES
from mrnet.core.errors import UserError
from mrnet.core.io import atomic_dir, write_json

log = logging.getLogger(__name__)

IMAGE_SIZE = 256
MIN_SLICES = 3
WINDOW_PERCENTILES = (0.5, 99.5)
# The patient axis the slice normal follows most (DICOM patient coordinates: x to the
# patient's left, y to posterior, z to head) names the plane.
PLANE_OF_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}
AXIS_ORDER = {0: "right to left", 1: "anterior to posterior", 2: "foot to head"}
DIRECTIONS = {(0, 1): "right to left", (0, -1): "left to right",
              (1, 1): "anterior to posterior", (1, -1): "posterior to anterior",
              (2, 1): "foot to head", (2, -1): "head to foot"}
# The in-plane orientation every series is written in: (patient axis, sign) of the way a row
# runs (left to right in the image) and of the way a column runs (top to bottom). It is the
# usual display's, which the classic exports have (sagittal: anterior left, head up; coronal
# and axial: the patient's right on the left, head or anterior up), so a series stored
# mirrored or transposed is put back to it and every exam of the model shows the anatomy
# the same way round.
IN_PLANE = {"sagittal": ((1, 1), (2, -1)), "coronal": ((0, 1), (2, -1)),
            "axial": ((0, 1), (1, 1))}
# MRNet's series (Bien et al. 2018): sagittal T2 (fat-saturated), coronal T1, axial PD.
PREFERRED_CONTRAST = {"sagittal": "T2", "coronal": "T1", "axial": "PD"}
LOCALIZER_WORDS = re.compile(r"\b(loc|localizer|localiser|scout|survey|3[- ]?plane)\b",
                             re.IGNORECASE)
SIDECAR = "dicom.json"
# Larger than any MR matrix; a header claiming more is damaged or hostile, and is refused
# before memory is allocated for it (float32 working copy).
MAX_MATRIX = 4096
MAX_VOXELS = 2**28
# Slice spacing may differ from the series' median by this fraction (or SPACING_ABS_MM,
# whichever is larger) -- rounding in the headers -- before it counts as a gap.
SPACING_TOLERANCE = 0.1
SPACING_ABS_MM = 0.1


class DicomError(UserError):
    """A DICOM exam that cannot be imported; the message names the series or file."""


@dataclass
class SliceHeader:
    """What the import needs from one file's header."""

    path: Path
    study_uid: str
    series_uid: str
    series_number: int | None
    description: str
    image_type: tuple[str, ...]
    orientation: np.ndarray | None  # (6,) row and column direction cosines
    position: np.ndarray | None  # (3,) mm, centre of the first voxel
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    spacing_given: bool = True  # False: no PixelSpacing, square 1 mm pixels assumed
    defect: str = ""  # why this slice cannot be part of an exam (empty: none)
    frame: int | None = None  # its frame (from 0) in a multi-frame file; None: a file a slice
    rescale: tuple[Any, Any] = (None, None)  # RescaleSlope, RescaleIntercept as written
    unusable: str = ""  # why its series cannot be read at all (empty: it can)

    @property
    def name(self) -> str:
        """The file's name, and the frame's number (from 1) in a multi-frame file."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


@dataclass
class Series:
    """One series of the exam and what the import made of it."""

    uid: str
    number: int | None
    description: str
    slices: list[SliceHeader]
    plane: str | None = None
    reason: str = ""  # why it is unusable (plane None) or how it was chosen
    normal: np.ndarray | None = None
    axis: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # A usable plane, but slices that would make a wrong volume (a gap, NaN geometry, ...):
    # importing it is an error, and the message says so.
    defect: str = ""

    def label(self) -> str:
        num = "?" if self.number is None else str(self.number)
        return f"series {num} {self.description!r}" if self.description else f"series {num}"


# ---------------------------------------------------------------- reading headers


def _floats(ds: Any, name: str, n: int) -> np.ndarray | None:
    value = ds.get(name)
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _is_part10(path: Path) -> bool:
    """Whether ``path`` starts as a DICOM Part 10 file ("DICM" at byte 128)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def read_headers(path: Path) -> list[SliceHeader] | None:
    """The headers of one file's slices: one for a classic file, one per frame for a
    multi-frame one (Enhanced MR: geometry, pixel measures and rescale per frame in
    ``PerFrameFunctionalGroupsSequence``, or for all frames in
    ``SharedFunctionalGroupsSequence``). None when it is not a DICOM image (DICOMDIR,
    reports, other files).

    Raises:
        DicomError: a DICOM file that cannot be read, or an image file missing what every
            image has (its matrix size, series, pixel data): a file cut short is named, never
            skipped, so a series is never written without one of its slices.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    part10 = _is_part10(path)
    damaged = (f"re-export the exam, or remove {path.name} from the folder if it is not part "
               "of it")
    try:
        # defer_size: large values (the pixels) are not loaded, only seen to be there.
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, OverflowError) as exc:
        if part10:
            raise DicomError(f"{path}: a DICOM file that cannot be read ({_first_line(exc)}); "
                             f"it may be cut short -- {damaged}") from None
        return None
    meta = getattr(ds, "file_meta", None)
    sop = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) \
        or ds.get("SOPClassUID")
    image = "Image Storage" in str(getattr(sop, "name", ""))
    if part10 and sop is None:
        raise DicomError(f"{path}: a DICOM file without its SOP class (cut short in its "
                         f"header?); {damaged}")
    if not image and "Rows" not in ds:
        return None  # a DICOMDIR, a report, a presentation state
    missing = [k for k in ("Rows", "Columns", "SeriesInstanceUID", "PixelData") if k not in ds]
    if missing:
        raise DicomError(f"{path}: a {getattr(sop, 'name', 'DICOM image')} file without "
                         f"{', '.join(missing)} (cut short?); {damaged}")
    try:
        number = int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError):
        rows, cols = 0, 0
    matrix = ""
    if not (0 < rows <= MAX_MATRIX and 0 < cols <= MAX_MATRIX):
        matrix = (f"a matrix of {ds.get('Rows')} x {ds.get('Columns')} (Rows x Columns; at most "
                  f"{MAX_MATRIX} x {MAX_MATRIX} is read)")
    common = {"path": path, "study_uid": str(ds.get("StudyInstanceUID", "")),
              "series_uid": str(ds.SeriesInstanceUID), "series_number": number,
              "description": str(ds.get("SeriesDescription", "")).strip(),
              "image_type": tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
              "rows": rows, "cols": cols}
    grouped = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames = _number_of_frames(ds)
    if not grouped and frames == 1:
        return [_slice_header(common, ds, matrix)]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if frames is None or len(per_frame) != frames:
        why = (f"a multi-frame file of NumberOfFrames {ds.get('NumberOfFrames')!s} with "
               f"{len(per_frame)} PerFrameFunctionalGroupsSequence items, so without a "
               "position for each frame")
        return [SliceHeader(**common, orientation=None, position=None, pixel_spacing=(1, 1),
                            unusable=f"{path.name} is {why}")]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    return [_slice_header(common, _FrameView(ds, shared, item), matrix, frame=k)
            for k, item in enumerate(per_frame)]


def _number_of_frames(ds: Any) -> int | None:
    """NumberOfFrames (1 when absent); None when it is not a positive integer."""
    raw = ds.get("NumberOfFrames")
    if raw is None or str(raw).strip() == "":
        return 1
    try:
        frames = int(raw)
    except (TypeError, ValueError):
        return None
    return frames if frames > 0 else None


# Where Enhanced MR keeps what a classic file has at the top level: keyword -> the
# functional group (a sequence of one item) that holds it.
FUNCTIONAL_GROUPS = {
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
}


class _FrameView:
    """One frame of a multi-frame file, read like a classic file: each keyword of
    :data:`FUNCTIONAL_GROUPS` from the frame's own functional groups, else the shared ones,
    else the top level."""

    def __init__(self, ds: Any, shared: Any, item: Any) -> None:
        self.ds, self.groups = ds, [g for g in (item, shared) if g is not None]

    def _find(self, name: str) -> tuple[bool, Any]:
        sequence = FUNCTIONAL_GROUPS.get(name)
        if sequence is not None:
            for group in self.groups:
                items = group.get(sequence) or []
                if items and name in items[0]:
                    return True, items[0].get(name)
        return (name in self.ds), self.ds.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        found, value = self._find(name)
        return value if found else default

    def __contains__(self, name: str) -> bool:
        return self._find(name)[0]


def _slice_header(common: dict[str, Any], ds: Any, matrix: str,
                  frame: int | None = None) -> SliceHeader:
    """One slice's header from a classic file's dataset or a :class:`_FrameView`."""
    defect = matrix
    spacing = _floats(ds, "PixelSpacing", 2)
    given = "PixelSpacing" in ds
    if given and (spacing is None or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0)):
        defect = defect or (f"PixelSpacing {ds.get('PixelSpacing')!s} (needs two positive "
                            "numbers, mm)")
        spacing = None
    position = _floats(ds, "ImagePositionPatient", 3)
    if position is not None and not np.all(np.isfinite(position)):
        defect = defect or f"ImagePositionPatient {position.tolist()} is not finite"
    return SliceHeader(
        **common, orientation=_floats(ds, "ImageOrientationPatient", 6), position=position,
        pixel_spacing=(1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1])),
        spacing_given=given, defect=defect, frame=frame,
        rescale=(ds.get("RescaleSlope"), ds.get("RescaleIntercept")))


def scan_exam(folder: str | Path) -> tuple[list[Series], list[Path]]:
    """Every DICOM image under ``folder`` (recursively), grouped by series.

    Returns:
        The series sorted by series number, and the files that are not DICOM images.
    Raises:
        DicomError: no DICOM images, or images of more than one study.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder; give the folder of one exam's DICOM files")
    headers: list[SliceHeader] = []
    skipped: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        found = read_headers(path)
        if found is None:
            skipped.append(path)
        else:
            headers.extend(found)
    if not headers:
        raise DicomError(f"{folder}: no DICOM images found ({len(skipped)} other files)")
    studies: dict[str, SliceHeader] = {}
    for h in headers:
        studies.setdefault(h.study_uid, h)
    if len(studies) > 1:
        a, b = list(studies.values())[:2]
        raise DicomError(f"{folder}: files of {len(studies)} studies (e.g. {a.path.name} of "
                         f"series {a.series_number} {a.description!r} and {b.path.name} of series "
                         f"{b.series_number} {b.description!r}); import one exam per folder")
    by_uid: dict[str, list[SliceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h)
    series = [Series(uid, hs[0].series_number, hs[0].description, hs)
              for uid, hs in by_uid.items()]
    series.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
    for s in series:
        classify(s)
    return series, skipped


def _one_in_plane_orientation(slices: list[SliceHeader]) -> bool:
    """Whether every slice's rows, and every slice's columns, run the same way: a slice
    mirrored against the others (same plane, so the same normal up to its sign) would be
    stacked mirrored."""
    for part in (slice(0, 3), slice(3, 6)):  # the row, then the column direction cosines
        cosines = np.array([h.orientation[part] for h in slices])
        cosines /= np.linalg.norm(cosines, axis=1)[:, None]
        if (cosines @ cosines[0]).min() < 0.99:
            return False
    return True


def classify(series: Series) -> Series:
    """Set ``series.plane`` (None when unusable) and ``series.reason``."""
    first = series.slices[0]
    if "LOCALIZER" in first.image_type or LOCALIZER_WORDS.search(series.description):
        series.reason = "localizer"
        return series
    unreadable = next((h.unusable for h in series.slices if h.unusable), "")
    if unreadable:
        series.reason = unreadable
        return series
    lacking = next((h for h in series.slices if h.orientation is None or h.position is None),
                   None)
    if lacking is not None:
        series.reason = (f"no ImageOrientationPatient/ImagePositionPatient in {lacking.name}"
                         if lacking.frame is None else
                         f"no PlaneOrientationSequence/PlanePositionSequence for {lacking.name} "
                         "(in its per-frame or shared functional groups)")
        return series
    bad = next((h for h in series.slices if not np.all(np.isfinite(h.orientation))), None)
    if bad is not None:
        series.reason = f"ImageOrientationPatient is not finite in {bad.name}"
        return series
    normals = np.array([np.cross(h.orientation[:3], h.orientation[3:]) for h in series.slices])
    lengths = np.linalg.norm(normals, axis=1)
    if lengths.min() < 0.5:
        series.reason = "ImageOrientationPatient is not two orthogonal unit vectors"
        return series
    normals /= lengths[:, None]
    normal = normals[0]
    if np.abs(normals @ normal).min() < 0.99:  # more than ~8 degrees apart
        series.reason = "slices in several orientations (a localizer?)"
        return series
    if not _one_in_plane_orientation(series.slices):
        series.reason = "slices whose rows or columns run different ways (ImageOrientationPatient)"
        return series
    sizes = Counter((h.rows, h.cols) for h in series.slices)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = next(h for h in series.slices if (h.rows, h.cols) != common)
        series.reason = (f"slices of different matrix sizes ({odd.name} is {odd.rows} x "
                         f"{odd.cols}, {sizes[common]} others {common[0]} x {common[1]})")
        return series
    if len(series.slices) < MIN_SLICES:
        series.reason = f"only {len(series.slices)} slice(s)"
        return series
    axis = int(np.argmax(np.abs(normal)))
    # Along the patient axis, whichever way the scanner's normal points.
    normal = normal * np.sign(normal[axis])
    series.plane, series.normal, series.axis = PLANE_OF_AXIS[axis], normal, axis
    series.info["obliquity_deg"] = round(float(np.degrees(np.arccos(min(1.0, normal[axis])))), 1)
    flawed = next((h for h in series.slices if h.defect), None)
    if flawed is not None:
        series.defect = f"{flawed.name} has {flawed.defect}"
        return series
    if len({h.pixel_spacing for h in series.slices}) > 1:
        series.defect = "its slices have different PixelSpacing"
        return series
    voxels = len(series.slices) * first.rows * first.cols
    if voxels > MAX_VOXELS:
        series.defect = (f"{len(series.slices)} slices of {first.rows} x {first.cols}, more "
                         f"than the {MAX_VOXELS} voxels read")
        return series
    ordered = sorted(series.slices, key=lambda h: float(h.position @ normal))
    positions = np.array([h.position @ normal for h in ordered])
    distinct = len(np.unique(np.round(positions, 2)))
    if distinct != len(positions):
        series.plane = series.normal = series.axis = None
        series.reason = (f"{len(positions)} images at {distinct} positions (several echoes "
                         "or repeats in one series)")
        return series
    gaps = np.diff(positions)
    step = float(np.percentile(gaps, 50, method="lower"))  # a missing slice cannot move it
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(SPACING_ABS_MM, SPACING_TOLERANCE * step):
        missing = f", {round(gaps[worst] / step) - 1} slice(s) missing?" \
            if gaps[worst] > 1.5 * step else ""
        series.defect = (f"a spacing of {gaps[worst]:.2f} mm between {ordered[worst].name} "
                         f"and {ordered[worst + 1].name} (at {positions[worst]:.2f} and "
                         f"{positions[worst + 1]:.2f} mm) where the series' spacing is "
                         f"{step:.2f} mm{missing}")
    return series


# ---------------------------------------------------------------- choosing series


def _match(request: str, series: list[Series]) -> Series:
    if request.strip().isdigit():
        found = [s for s in series if s.number == int(request)]
    else:
        key = request.strip().casefold()
        found = [s for s in series if s.description.casefold() == key]
        if not found:
            found = [s for s in series if key in s.description.casefold()]
    if len(found) != 1:
        listed = "; ".join(f"{s.label()} ({s.plane or s.reason})" for s in series)
        what = "matches no series" if not found else f"matches {len(found)} series"
        raise DicomError(f"--series {request!r} {what}; the exam has: {listed}")
    return found[0]


def choose_series(series: list[Series], requests: Sequence[str] = (),
                  source: str = "exam") -> dict[str, Series]:
    """One series per plane: the requested ones, then MRNet's contrast, then most slices.

    Raises:
        DicomError: a request matches no usable series, two requests share a plane, or a
            plane has no usable series.
    """
    chosen: dict[str, Series] = {}
    for request in requests:
        s = _match(request, series)
        if s.plane is None:
            raise DicomError(f"--series {request!r}: {s.label()} is unusable ({s.reason})")
        if s.plane in chosen:
            raise DicomError(f"--series {request!r}: {s.label()} is {s.plane}, like "
                             f"{chosen[s.plane].label()}; choose one series per plane")
        s.reason = f"chosen with --series {request!r}"
        chosen[s.plane] = s
    for plane in PLANES:
        if plane in chosen:
            continue
        candidates = [s for s in series if s.plane == plane]
        if not candidates:
            listed = "; ".join(f"{s.label()} ({s.plane or s.reason})" for s in series)
            raise DicomError(f"{source}: no usable {plane} series (found: {listed}); "
                             "an MRNet exam needs axial, coronal and sagittal series")
        contrast = PREFERRED_CONTRAST[plane]
        pattern = re.compile(rf"(?<![A-Za-z0-9]){contrast}(?![0-9])", re.IGNORECASE)
        preferred = [s for s in candidates if pattern.search(s.description)]
        pool = preferred or candidates
        best = max(pool, key=lambda s: (len(s.slices), -(s.number or 0)))
        if len(candidates) == 1:
            best.reason = f"the only {plane} series"
        elif preferred:
            best.reason = (f"{contrast} in its description (MRNet's {plane} contrast)"
                           f"{', most slices' if len(preferred) > 1 else ''}; "
                           f"of {len(candidates)} {plane} series")
        else:
            best.reason = (f"most slices ({len(best.slices)}) of {len(candidates)} {plane} "
                           f"series, none described as {contrast}")
        chosen[plane] = best
    for s in series:
        if s.plane is not None and chosen.get(s.plane) is not s:
            s.reason = f"another {s.plane} series was chosen"
    for plane in PLANES:
        s = chosen[plane]
        if s.defect:
            others = [o.label() for o in series if o.plane == plane and o is not s
                      and not o.defect]
            hint = (f"choose another {plane} series with --series ({'; '.join(others)})"
                    if others else "re-export the series")
            raise DicomError(f"{source}: {s.label()} ({plane}): {s.defect}; {hint}")
    return chosen


# ---------------------------------------------------------------- pixels


def read_pixels(series: Series) -> tuple[np.ndarray, list[SliceHeader]]:
    """The series' slices in anatomical order as float32 (S, rows, cols), rescaled, as
    stored (in-plane orientation untouched: see :func:`orient_in_plane`).

    Raises:
        DicomError: a file's pixel data cannot be decoded (names the file and its transfer
            syntax) or is not one grey image per slice.
    """
    import pydicom

    assert series.normal is not None, "classify() first"
    ordered = sorted(series.slices, key=lambda h: float(h.position @ series.normal))
    rows, cols = ordered[0].rows, ordered[0].cols
    out = np.empty((len(ordered), rows, cols), dtype=np.float32)
    slopes, intercepts = set(), set()
    by_file: dict[Path, list[tuple[int, SliceHeader]]] = {}
    for i, h in enumerate(ordered):
        by_file.setdefault(h.path, []).append((i, h))
    for path, slices in by_file.items():  # a multi-frame file is read and decoded once
        ds = pydicom.dcmread(path)
        multi = slices[0][1].frame is not None
        frames = _number_of_frames(ds) if multi else 1
        pixels = _decode(ds, path, series)
        expected = (frames, rows, cols) if frames > 1 else (rows, cols)
        if pixels.shape != expected:
            what = f"{frames} grey frames" if frames > 1 else "one grey image"
            raise DicomError(f"{path}: pixel data of shape {pixels.shape} in {series.label()};"
                             f" expected {what} of {rows} x {cols}")
        pixels = pixels.reshape(frames, rows, cols)
        negate = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
        for i, h in slices:
            slope, intercept = _rescale(h, series)
            slopes.add(slope)
            intercepts.add(intercept)
            value = pixels[h.frame or 0].astype(np.float32) * slope + intercept
            out[i] = -value if negate else value  # MONOCHROME1 shows low values bright
    series.info["rescale_slope"] = sorted(slopes)
    series.info["rescale_intercept"] = sorted(intercepts)
    return out, ordered


# The installed decoders cover every standard still-image syntax; these name what to install
# when one is missing, and what else to export when no decoder exists at all (video syntaxes).
DECODERS = "pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg, and pyjpegls"
LOSSLESS_SYNTAXES = "JPEG Lossless, JPEG-LS, JPEG 2000 or RLE Lossless"


def _decode(ds: Any, path: Path, series: Series) -> np.ndarray:
    """A file's pixel data, decoded.

    Raises:
        DicomError: no decoder for its transfer syntax, or data that is damaged or cut short
            (a JPEG frame must end with its end-of-image marker: the JPEG and JPEG-LS
            decoders return a truncated frame's missing pixels as made-up values).
    """
    from pydicom.encaps import generate_frames

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax)
    damaged = (f"{path}: the pixel data of {series.label()} is damaged or cut short "
               f"(transfer syntax {name}: {{}}); re-export the series")
    try:
        if syntax is not None and syntax.is_encapsulated and "JPEG" in name:
            frames = int(ds.get("NumberOfFrames") or 1)
            for k, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
                if not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
                    raise DicomError(damaged.format(f"frame {k + 1} ends without its "
                                                    "end-of-image marker"))
        return ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError,
            EOFError, TypeError) as exc:
        text = " ".join(str(exc).split())
        if isinstance(exc, NotImplementedError) and "not supported" in text:
            raise DicomError(f"{path}: cannot decode the pixel data of {series.label()} "
                             f"(transfer syntax {name}, which no installed decoder reads); "
                             "install a decoder for it or export the series uncompressed or "
                             f"as {LOSSLESS_SYNTAXES}") from None
        if "missing dependencies" in text or "No pixel data decoders" in text:
            raise DicomError(f"{path}: cannot decode the pixel data of {series.label()} "
                             f"(transfer syntax {name}: {_first_line(exc)}); install a "
                             f"decoder for it ({DECODERS}, as the project's dependencies "
                             "list) or export uncompressed") from None
        raise DicomError(damaged.format(text[:200])) from None


def _rescale(header: SliceHeader, series: Series) -> tuple[float, float]:
    """A slice's RescaleSlope and RescaleIntercept, checked to give a real image."""
    values = []
    for name, raw, default in zip(("RescaleSlope", "RescaleIntercept"), header.rescale,
                                  (1.0, 0.0)):
        where = f"{header.path}: {name} {raw!s}"
        if header.frame is not None:
            where += f" of frame {header.frame + 1}"
        try:
            value = default if raw is None or str(raw).strip() == "" else float(raw)
        except (TypeError, ValueError):
            raise DicomError(f"{where} in {series.label()} is not a number; "
                             "re-export the series") from None
        if not np.isfinite(value):
            raise DicomError(f"{where} in {series.label()} is not finite; "
                             "re-export the series")
        values.append(value)
    if values[0] == 0:
        raise DicomError(f"{header.path}: RescaleSlope 0 in {series.label()} would make every "
                         f"pixel {values[1]}; re-export the series")
    return values[0], values[1]


def orient_in_plane(volume: np.ndarray, orientation: np.ndarray, plane: str,
                    pixel_spacing: tuple[float, float]
                    ) -> tuple[np.ndarray, tuple[float, float], dict[str, Any]]:
    """A (S, rows, cols) series turned to the plane's :data:`IN_PLANE` orientation.

    Args:
        volume: the slices as stored.
        orientation: the series' ``ImageOrientationPatient`` (row, then column cosines).
        plane: the series' plane.
        pixel_spacing: (between rows, between columns) in mm, as stored.
    Returns:
        The volume (transposed and/or flipped as needed), its pixel spacing, and what was
        done: how rows and columns ran as stored and the steps applied, in order.
    """
    r, c = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)

    def runs(v: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(v)))
        return DIRECTIONS[(axis, 1 if v[axis] > 0 else -1)]

    stored = {"rows": runs(r), "columns": runs(c)}
    (h_axis, h_sign), (v_axis, v_sign) = IN_PLANE[plane]
    applied = []
    # Rows running along the plane's vertical axis: rows and columns are swapped.
    if abs(r[v_axis]) + abs(c[h_axis]) > abs(r[h_axis]) + abs(c[v_axis]):
        volume, r, c = volume.transpose(0, 2, 1), c, r
        pixel_spacing = (pixel_spacing[1], pixel_spacing[0])
        applied.append("transpose")
    if r[h_axis] * h_sign < 0:
        volume = volume[:, :, ::-1]
        applied.append("flip left-right")
    if c[v_axis] * v_sign < 0:
        volume = volume[:, ::-1, :]
        applied.append("flip top-bottom")
    written = {"rows": DIRECTIONS[IN_PLANE[plane][0]], "columns": DIRECTIONS[IN_PLANE[plane][1]]}
    return (np.ascontiguousarray(volume), pixel_spacing,
            {"stored": stored, "applied": applied, "written": written})


def to_mrnet(volume: np.ndarray, pixel_spacing: tuple[float, float],
             size: int = IMAGE_SIZE) -> tuple[np.ndarray, dict[str, Any]]:
    """A float (S, H, W) series as MRNet's uint8 (S, size, size).

    The window is the series' 0.5th-99.5th percentile range; a non-square field of view is
    padded (with the window's low end) to a square in millimetres before resampling, so
    anatomy keeps its proportions.
    """
    import torch
    import torch.nn.functional as F

    lo, hi = (float(v) for v in np.percentile(volume, WINDOW_PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((volume - lo) / (hi - lo), 0.0, 1.0) * 255.0
    dr, dc = pixel_spacing
    h, w = volume.shape[1:]
    fov = max(h * dr, w * dc)
    ph, pw = round(fov / dr), round(fov / dc)
    top, left = (ph - h) // 2, (pw - w) // 2
    square = np.zeros((volume.shape[0], max(ph, h), max(pw, w)), dtype=np.float32)
    square[:, top:top + h, left:left + w] = scaled
    x = torch.from_numpy(square).unsqueeze(1)
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()
    return out, {"window": [round(lo, 3), round(hi, 3)], "matrix": [h, w],
                 "pixel_spacing_mm": [dr, dc], "field_of_view_mm": round(fov, 2)}


# ---------------------------------------------------------------- the import


OUTPUTS = frozenset({*(f"{p}.npy" for p in PLANES), SIDECAR})


def check_out_dir(out_dir: Path, folder: Path) -> None:
    """Refuse an output folder whose replacement would lose anything but an earlier import.

    Raises:
        DicomError: ``out_dir`` is a file, is or holds the exam folder, or holds anything
            other than the three series and ``dicom.json``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DicomError(f"{out_dir}: exists and is not a folder; OUT_DIR is the folder the "
                         f"three series and {SIDECAR} go to")
    resolved = out_dir.resolve()
    if folder.exists() and (resolved == folder.resolve() or resolved in folder.resolve().parents):
        raise DicomError(f"{out_dir}: is the exam folder {folder} or holds it; the import "
                         "replaces OUT_DIR whole, so give a folder of its own")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise DicomError(f"{out_dir}: holds {foreign[0]!r}, which no import wrote; the "
                             "import replaces OUT_DIR whole, so give a new or empty folder "
                             "(or one holding an earlier import)")


def import_exam(folder: str | Path, out_dir: str | Path, series: Sequence[str] = (),
                size: int = IMAGE_SIZE) -> dict[str, Any]:
    """Write ``out_dir/{plane}.npy`` for the three planes and ``out_dir/dicom.json``.

    Args:
        folder: one exam's DICOM files (any names, any sub-folders).
        out_dir: where the series go (created).
        series: series to use, by number or description (the other planes are chosen
            automatically).
        size: output image size.
    Returns:
        The sidecar written to ``dicom.json``.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    folder, out_dir = Path(folder), Path(out_dir)
    check_out_dir(out_dir, folder)
    found, skipped = scan_exam(folder)
    chosen = choose_series(found, series, str(folder))
    planes: dict[str, Any] = {}
    volumes = {}
    for plane in PLANES:
        s = chosen[plane]
        pixels, ordered = read_pixels(s)
        # Turned before resampling: padding to a square is the same on either side only
        # when the margin is even, so a mirrored export is put back while still exact.
        pixels, spacing, in_plane = orient_in_plane(pixels, ordered[0].orientation, plane,
                                                    ordered[0].pixel_spacing)
        volumes[plane], resample = to_mrnet(pixels, spacing, size)
        positions = [float(h.position @ s.normal) for h in ordered]
        gaps = np.diff(positions)
        planes[plane] = {
            "series_number": s.number, "description": s.description, "series_uid": s.uid,
            "why": s.reason, "slices": len(ordered),
            "order": f"by position along the slice normal, {AXIS_ORDER[s.axis]}",
            "position_mm": [round(positions[0], 2), round(positions[-1], 2)],
            "slice_spacing_mm": round(float(np.median(gaps)), 3) if len(gaps) else None,
            "files": [h.path.relative_to(folder).as_posix()
                      + ("" if h.frame is None else f" frame {h.frame + 1}") for h in ordered],
            "in_plane": in_plane,
            **({} if ordered[0].spacing_given else
               {"pixel_spacing_note": "no PixelSpacing in the headers; square pixels assumed"}),
            **s.info, **resample}
    sidecar = {
        "source": str(folder), "image_size": size, "planes": planes,
        "ignored": [{"series_number": s.number, "description": s.description,
                     "reason": s.reason} for s in found if chosen.get(s.plane) is not s],
        "non_image_files": len(skipped),
        "intensity": (f"rescale slope/intercept applied, then each series windowed to uint8 "
                      f"between its {WINDOW_PERCENTILES[0]}th and {WINDOW_PERCENTILES[1]}th "
                      "percentiles"),
    }
    check_out_dir(out_dir, folder)  # again: the folder may have changed while we read
    # The four files are swapped in together: never new series beside an old dicom.json.
    with atomic_dir(out_dir) as tmp:
        for plane, vol in volumes.items():
            with (tmp / f"{plane}.npy").open("wb") as fh:
                np.save(fh, vol, allow_pickle=False)
        write_json(tmp / SIDECAR, sidecar)
    for plane in PLANES:
        p = planes[plane]
        log.info("%s: series %s %r, %d slices (%s) -> %s", plane, p["series_number"],
                 p["description"], p["slices"], p["why"], out_dir / f"{plane}.npy")
    return sidecar


def is_dicom_folder(folder: str | Path) -> bool:
    """Whether ``folder`` (or a sub-folder) holds a DICOM Part 10 file ("DICM" at byte 128)."""
    return any(path.is_file() and _is_part10(path) for path in Path(folder).rglob("*"))


def import_to_temp(folder: str | Path, size: int = IMAGE_SIZE) -> Path:
    """Import a DICOM exam into a temporary folder removed when the process exits."""
    tmp = Path(tempfile.mkdtemp(prefix="mrnet-dicom-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    import_exam(folder, tmp, size=size)
    return tmp
