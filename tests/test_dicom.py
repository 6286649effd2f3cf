"""DICOM import on exams written here with pydicom: opaque shuffled file names, three planes,
a localizer, rescale slope/intercept, two matrix sizes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, MPEG2MPML, MRImageStorage, generate_uid

from mrnet.data.dicom import DicomError, import_exam, is_dicom_folder, scan_exam
from mrnet.data.reader import load_series

# (row cosines, column cosines) as scanners write them. The sagittal normal (row x col)
# points to the patient's right (-x) and the coronal one to anterior (-y): the import must
# order slices along the patient axis whatever way the normal points.
SAGITTAL = (0, 1, 0, 0, 0, -1)
CORONAL = (1, 0, 0, 0, 0, -1)
AXIAL = (1, 0, 0, 0, 1, 0)

# series number, description, orientation, slices, (rows, cols), pixel spacing
EXAM = [
    (3, "SAG T2 FS", SAGITTAL, 7, (64, 64), (2.0, 2.0)),
    (4, "SAG PD", SAGITTAL, 9, (64, 64), (2.0, 2.0)),
    (5, "COR T1", CORONAL, 6, (64, 64), (2.0, 2.0)),
    (6, "COR PD FS", CORONAL, 8, (64, 64), (2.0, 2.0)),
    (7, "AX PD FS", AXIAL, 5, (40, 48), (2.5, 2.5)),  # another, non-square matrix
]


def new_file_dataset(sop_class: str) -> Dataset:
    """An empty uncompressed (explicit VR little endian) DICOM file of ``sop_class``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def _dataset(study: str, series_uid: str, number: int, description: str,
             orientation: tuple, position: tuple, pixels: np.ndarray, spacing: tuple,
             instance: int, slope: float = 1.0, intercept: float = 0.0,
             image_type: tuple = ("ORIGINAL", "PRIMARY", "M")) -> Dataset:
    ds = new_file_dataset(MRImageStorage)
    ds.Modality = "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
    ds.SeriesNumber, ds.InstanceNumber = number, instance
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_exam(folder: Path, seed: int = 0, study: str | None = None,
               series: list = EXAM, localizer: bool = True,
               texture: int = 0) -> dict[int, list[float]]:
    """Write an exam of one file per slice under opaque, shuffled names.

    Slice k (in anatomical order along its plane's patient axis) has stored values that are
    all equal, and a per-slice rescale slope/intercept that make its true value 100 + 40 k, so
    slices come out brighter in anatomical order only if the rescale is applied and the
    slices are ordered by position. Instance numbers are reversed against anatomy. The
    top-left corner (first rows, first columns) is 0. ``texture`` > 0 adds seeded noise of
    that range to every stored value, so that no two pixels need agree (for tests that
    compare exports pixel for pixel).

    Returns:
        {series number: each slice's position along the patient axis, in anatomical order}.
    """
    rng = random.Random(seed)
    study = study or generate_uid()
    files: list[Dataset] = []
    truth = {}
    for number, desc, orient, n, shape, spacing in series:
        uid = generate_uid()
        r, c = np.array(orient[:3], float), np.array(orient[3:], float)
        normal = np.cross(r, c)
        axis = int(np.argmax(np.abs(normal)))
        truth[number] = [-20.0 + 3.5 * k for k in range(n)]
        for k, pos in enumerate(truth[number]):
            point = np.zeros(3)
            point[axis] = pos  # along +axis; the scanner's normal may point the other way
            slope = 0.5 + 0.25 * (k % 3)
            stored = np.full(shape, 200, dtype=np.uint16)
            if texture:
                noise = np.random.default_rng([seed, number, k]).integers(0, texture, shape)
                stored += noise.astype(np.uint16)
            stored[: shape[0] // 4, : shape[1] // 4] = 0  # a corner, so the window has a range
            true_value = 100.0 + 40.0 * k
            intercept = true_value - slope * 200
            files.append(_dataset(study, uid, number, desc, orient, tuple(point), stored,
                                  spacing, instance=n - k, slope=slope,
                                  intercept=intercept))
    if localizer:
        uid = generate_uid()
        for i, orient in enumerate((SAGITTAL, CORONAL, AXIAL)):
            files.append(_dataset(study, uid, 1, "3-plane loc", orient, (0.0, 0.0, 0.0),
                                  np.full((32, 32), 50, np.uint16), (8.0, 8.0), i + 1,
                                  image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    rng.shuffle(files)
    folder.mkdir(parents=True, exist_ok=True)
    sub = folder / "DICOM" / "S0001"
    sub.mkdir(parents=True)
    for ds in files:
        name = f"IM{rng.randrange(16**8):08X}"  # opaque names, no order in them
        ds.save_as(sub / name, enforce_file_format=True)
    (folder / "README.TXT").write_text("exported by a scanner\n")
    return truth


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[float]]]:
    folder = tmp_path_factory.mktemp("dicom") / "knee-0042"
    return folder, write_exam(folder)


@pytest.fixture(scope="module")
def imported(exam: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "knee-0042"
    import_exam(exam[0], out)
    return out


def test_each_series_gets_its_plane_and_the_localizer_is_ignored(exam: tuple[Path, dict]) -> None:
    series, skipped = scan_exam(exam[0])
    planes = {s.number: s.plane for s in series}
    assert planes == {1: None, 3: "sagittal", 4: "sagittal", 5: "coronal", 6: "coronal",
                      7: "axial"}
    assert [s.reason for s in series if s.number == 1] == ["localizer"]
    assert [p.name for p in skipped] == ["README.TXT"]
    assert is_dicom_folder(exam[0])


def test_import_writes_three_mrnet_series_in_anatomical_order(
        imported: Path, exam: tuple[Path, dict]) -> None:
    sidecar = json.loads((imported / "dicom.json").read_text())
    # MRNet's contrasts: sagittal T2, coronal T1, axial PD.
    chosen = {p: sidecar["planes"][p]["series_number"] for p in ("axial", "coronal", "sagittal")}
    assert chosen == {"axial": 7, "coronal": 5, "sagittal": 3}
    for plane, number in chosen.items():
        vol = load_series(imported / f"{plane}.npy")  # checks uint8, 3-D
        n = len(exam[1][number])
        assert vol.shape == (n, 256, 256)
        # The centre of slice k holds the true value 100 + 40k (stored values are all equal,
        # so only the rescale makes them differ): brighter in anatomical order by equal steps,
        # the last slice at the top of the window.
        centre = vol[:, 96:160, 96:160].astype(float).mean(axis=(1, 2))
        steps = np.diff(centre)
        assert steps.min() > 10 and steps.max() - steps.min() <= 1, (plane, centre)
        assert centre[-1] == 255
        info = sidecar["planes"][plane]
        assert info["slices"] == n
        assert info["position_mm"] == [exam[1][number][0], exam[1][number][-1]]
        assert info["slice_spacing_mm"] == 3.5
        assert len(info["rescale_slope"]) == 3
    assert "T1" in sidecar["planes"]["coronal"]["why"]
    ignored = {i["series_number"]: i["reason"] for i in sidecar["ignored"]}
    assert ignored == {1: "localizer", 4: "another sagittal series was chosen",
                       6: "another coronal series was chosen"}
    assert sidecar["planes"]["axial"]["matrix"] == [40, 48]
    assert sidecar["non_image_files"] == 1


def test_non_square_field_of_view_is_padded_not_stretched(imported: Path) -> None:
    # The axial matrix is 40 x 48 at 2.5 mm: 100 x 120 mm, padded to 120 x 120 mm, so the
    # top and bottom 1/12 of the 256 rows are padding (black) while the columns are all image.
    vol = load_series(imported / "axial.npy")
    last = vol[-1].astype(float)
    assert last[:15].max() == 0 and last[-15:].max() == 0
    assert last[40:-40, -10:].min() == 255


def test_series_chosen_by_number_or_description(exam: tuple[Path, dict], tmp_path: Path) -> None:
    sidecar = import_exam(exam[0], tmp_path / "out", series=["4", "cor pd fs"], size=64)
    assert sidecar["planes"]["sagittal"]["series_number"] == 4
    assert sidecar["planes"]["coronal"]["series_number"] == 6
    assert sidecar["planes"]["axial"]["series_number"] == 7
    assert np.load(tmp_path / "out" / "sagittal.npy").shape == (9, 64, 64)
    with pytest.raises(DicomError, match=r"--series '3-plane loc': series 1 .* unusable "
                                         r"\(localizer\)"):
        import_exam(exam[0], tmp_path / "x", series=["3-plane loc"])
    with pytest.raises(DicomError, match=r"--series '3': series 3 'SAG T2 FS' is sagittal, like series 4"):
        import_exam(exam[0], tmp_path / "x", series=["4", "3"])
    with pytest.raises(DicomError, match=r"--series '99' matches no series; the exam has: "
                                         r"series 1 '3-plane loc' \(localizer\)"):
        import_exam(exam[0], tmp_path / "x", series=["99"])


def test_a_folder_without_dicom_files_is_not_an_exam(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here\n")
    assert not is_dicom_folder(tmp_path)
    with pytest.raises(DicomError, match=r"no DICOM images found \(1 other files\)"):
        import_exam(tmp_path, tmp_path / "out")


def test_missing_plane_names_what_was_found(tmp_path: Path) -> None:
    write_exam(tmp_path / "exam", series=[s for s in EXAM if s[2] != CORONAL])
    with pytest.raises(DicomError, match=r"exam: no usable coronal series \(found: series 1 "
                                         r"'3-plane loc' \(localizer\); series 3 'SAG T2 FS' "
                                         r"\(sagittal\)"):
        import_exam(tmp_path / "exam", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_two_studies_in_one_folder_are_refused(tmp_path: Path) -> None:
    write_exam(tmp_path / "exam" / "a", study="1.2.3.1")
    write_exam(tmp_path / "exam" / "b", seed=1, study="1.2.3.2", localizer=False)
    with pytest.raises(DicomError, match=r"files of 2 studies .*import one exam per folder"):
        import_exam(tmp_path / "exam", tmp_path / "out")


def test_compressed_pixels_without_a_decoder_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "exam"
    write_exam(folder, localizer=False)
    # Re-encode one axial file in a video syntax, which no decoder for still images reads.
    victim = next(p for p in sorted(folder.rglob("IM*"))
                  if pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber == 7)
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(DicomError) as info:
        import_exam(folder, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{victim}: cannot decode the pixel data of series 7 'AX PD FS' "
                              "(transfer syntax MPEG2 Main Profile / Main Level, which no "
                              "installed decoder reads); install a decoder for it or export")
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


def test_several_images_per_position_are_not_a_series_to_stack(tmp_path: Path) -> None:
    twice = [(9, "AX PD DUAL ECHO", AXIAL, 4, (32, 32), (2.0, 2.0))]
    write_exam(tmp_path / "a", seed=2, study="1.2.9", series=twice, localizer=False)
    write_exam(tmp_path / "b", seed=3, study="1.2.9", series=twice, localizer=False)
    # Same study, two series uids with number 9: each alone is fine ...
    series, _ = scan_exam(tmp_path)
    assert [s.plane for s in series] == ["axial", "axial"]
    # ... but one series uid holding two images per position is refused with the reason.
    uid_a = next(s.uid for s in series if (tmp_path / "a") in s.slices[0].path.parents)
    for p in (tmp_path / "b").rglob("IM*"):
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = uid_a
        ds.save_as(p, enforce_file_format=True)
    series, _ = scan_exam(tmp_path)
    assert len(series) == 1 and series[0].plane is None
    assert series[0].reason.startswith("8 images at 4 positions")
