"""MURA-v1.1 reader: layout, grey and RGB PNGs, 1-4 views, trailing slashes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrnet.core.errors import DatasetError
from mrnet.mura.data import load_view, read_split, study_view_files
from mrnet.mura.validate import validate_dataset

# (study folder below the split, label, views as (mode, height, width))
STUDIES = {
    "train": [
        ("XR_WRIST/patient00001/study1_positive", 1, [("L", 40, 36), ("RGB", 33, 48)]),
        ("XR_WRIST/patient00001/study2_negative", 0, [("RGB", 40, 40)]),
        ("XR_HAND/patient00002/study1_negative", 0, [("L", 30, 50), ("L", 44, 32),
                                                     ("RGB", 36, 36), ("L", 32, 32)]),
        ("XR_ELBOW/patient00003/study1_positive", 1, [("L", 48, 40), ("RGB", 40, 48),
                                                      ("L", 40, 40)]),
    ],
    "valid": [
        ("XR_SHOULDER/patient11185/study1_positive", 1, [("RGB", 40, 40), ("L", 40, 40)]),
        ("XR_FINGER/patient11186/study1_negative", 0, [("L", 36, 44)]),
    ],
}


def pixels(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def write_dataset(root: Path, studies: dict = STUDIES) -> dict[str, np.ndarray]:
    """A hand-made MURA-v1.1 folder; returns the grey pixels written per image path."""
    written = {}
    for split, rows in studies.items():
        image_lines, study_lines = [], []
        for k, (study, label, views) in enumerate(rows):
            folder = root / split / study
            folder.mkdir(parents=True)
            for i, (mode, h, w) in enumerate(views, 1):
                grey = pixels(h, w, 100 * k + i)
                img = Image.fromarray(grey) if mode == "L" else Image.fromarray(
                    np.repeat(grey[..., None], 3, axis=2), "RGB")
                img.save(folder / f"image{i}.png")
                written[f"{split}/{study}/image{i}.png"] = grey
                image_lines.append(f"MURA-v1.1/{split}/{study}/image{i}.png")
            study_lines.append(f"MURA-v1.1/{split}/{study}/,{label}")
        (root / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n")
    return written


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "MURA-v1.1"
    write_dataset(root)
    return root


def test_reader_joins_views_to_studies_by_folder(dataset: Path) -> None:
    train = read_split(dataset, "train")
    s = train.studies
    assert s["study_id"].tolist() == [r[0] for r in STUDIES["train"]]
    assert s["study_type"].tolist() == ["XR_WRIST", "XR_WRIST", "XR_HAND", "XR_ELBOW"]
    assert s["patient"].tolist() == ["patient00001", "patient00001", "patient00002",
                                     "patient00003"]
    assert s["label"].tolist() == [1, 0, 0, 1]
    assert s["n_views"].tolist() == [2, 1, 4, 3]
    assert (s["split"] == "train").all()
    assert all(isinstance(x, str) for x in s["study_id"])
    v = train.views
    assert v["study_id"].tolist() == ["XR_WRIST/patient00001/study1_positive"] * 2 + [
        "XR_WRIST/patient00001/study2_negative"] + ["XR_HAND/patient00002/study1_negative"] * 4 + [
        "XR_ELBOW/patient00003/study1_positive"] * 3
    assert v["view"].tolist()[:4] == ["image1", "image2", "image1", "image1"]
    assert Path(v["path"].iloc[3]) == (dataset / "train/XR_HAND/patient00002/study1_negative/"
                                       "image1.png").resolve()


def test_image_rows_in_any_order_and_studies_without_trailing_slash(dataset: Path) -> None:
    csv = dataset / "train_image_paths.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(reversed(lines)) + "\n")
    labels = dataset / "train_labeled_studies.csv"
    labels.write_text(labels.read_text().replace("/,", ","))
    s = read_split(dataset, "train")
    assert s.studies["n_views"].tolist() == [2, 1, 4, 3]
    # views keep image-CSV order within a study (reversed here)
    assert s.views["view"].tolist()[:2] == ["image2", "image1"]


def test_grey_and_rgb_pngs_read_as_the_same_grey_pixels(dataset: Path, tmp_path: Path) -> None:
    written = write_dataset(tmp_path / "again" / "MURA-v1.1")
    for rel, grey in written.items():
        view = load_view(tmp_path / "again" / "MURA-v1.1" / rel)
        assert view.dtype == np.uint8 and view.shape == grey.shape
        np.testing.assert_array_equal(view, grey)


def test_sixteen_bit_png_is_scaled_to_its_range(tmp_path: Path) -> None:
    path = tmp_path / "image1.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]] * 8, dtype=np.uint16).repeat(8, 1)).save(path)
    view = load_view(path)
    assert view.dtype == np.uint8 and view.min() == 0 and view.max() == 255
    assert view[0, 8] == round(1000 / 4000 * 255)


def test_validate_reports_counts_sizes_modes_and_type_images(dataset: Path) -> None:
    report = validate_dataset(dataset)
    t = report["train"]
    assert (t["studies"], t["images"], t["views_min"], t["views_max"]) == (4, 10, 1, 4)
    assert t["abnormal_fraction"] == 0.5
    assert t["modes"] == {"L": 6, "RGB": 4}
    assert (t["height_min"], t["height_max"], t["width_min"], t["width_max"]) == (30, 48, 32, 50)
    assert t["per_type"]["XR_WRIST"] == {"studies": 2, "abnormal_studies": 1,
                                         "abnormal_images": 2, "normal_images": 1}
    assert report["valid"]["studies"] == 2 and report["valid"]["images"] == 3


def test_study_folder_views_in_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        Image.fromarray(pixels(16, 16, i)).save(tmp_path / f"image{i}.png")
    (tmp_path / "._image1.png").write_bytes(b"macOS resource fork")
    (tmp_path / "notes.txt").write_text("not a view")
    assert [p.name for p in study_view_files(tmp_path)] == ["image1.png", "image2.png",
                                                             "image10.png"]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


LABELS = "train_labeled_studies.csv"
IMAGES = "train_image_paths.csv"


@pytest.mark.parametrize("break_it, message", [
    (lambda r: _edit(r / LABELS, "study1_positive/,1", "study1_positive/,0"),
     f"{LABELS}:1: label 0 contradicts the folder name study1_positive"),
    (lambda r: _edit(r / LABELS, "study1_positive/,1", "study1_positive/,yes"),
     f"{LABELS}:1: label 'yes'; labels must be 0 or 1"),
    (lambda r: (r / LABELS).write_text("path,label\n" + (r / LABELS).read_text()),
     f"{LABELS}:1: a header row; labels must be 0 or 1"),
    (lambda r: _edit(r / LABELS, "study2_negative/,0", "study2_negative/,0,extra"),
     f"{LABELS}:2: expected 2 columns (study folder, label), got 3"),
    (lambda r: _edit(r / LABELS, "XR_HAND/patient00002", "XR_FOOT/patient00002"),
     f"{LABELS}:3: unknown study type 'XR_FOOT'"),
    (lambda r: (r / LABELS).write_text((r / LABELS).read_text()
                                       + "MURA-v1.1/train/XR_HAND/patient00002/study1_negative/,0\n"),
     f"{LABELS}:5: study XR_HAND/patient00002/study1_negative is listed twice (first on line 3)"),
    (lambda r: (r / "train/XR_HAND/patient00002/study1_negative/image3.png").unlink(),
     f"{IMAGES}:6: image file"),
    (lambda r: _edit(r / IMAGES, "patient00003/study1_positive/image1",
                     "patient00009/study1_positive/image1"),
     f"{IMAGES}:8: image of study XR_ELBOW/patient00009/study1_positive, which "
     f"{LABELS} does not label"),
    (lambda r: _edit(r / IMAGES, "MURA-v1.1/train/XR_WRIST/patient00001/study2_negative/image1.png\n",
                     ""),
     f"{IMAGES}: study XR_WRIST/patient00001/study2_negative has no image"),
    (lambda r: _edit(r / IMAGES, "MURA-v1.1/train/", "MURA-v1.1/valid/"),
     f"{IMAGES}:1: path 'MURA-v1.1/valid/XR_WRIST"),
    (lambda r: (r / LABELS).unlink(), f"{LABELS}: CSV not found"),
])
def test_reader_errors_are_one_line_naming_file_and_row(dataset: Path, break_it, message) -> None:
    break_it(dataset)
    with pytest.raises(DatasetError) as err:
        read_split(dataset, "train")
    text = str(err.value)
    assert "\n" not in text
    assert message in text, text


def test_corrupt_png_named_by_validate_and_load(dataset: Path) -> None:
    bad = dataset / "valid/XR_FINGER/patient11186/study1_negative/image1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"image1.png: not a readable PNG image"):
        validate_dataset(dataset)
    with pytest.raises(DatasetError, match=r"image1.png: not a readable PNG image"):
        load_view(bad)


def test_patient_in_both_splits_is_refused(tmp_path: Path) -> None:
    studies = {"train": STUDIES["train"],
               "valid": [("XR_HAND/patient00002/study2_positive", 1, [("L", 32, 32)])]}
    write_dataset(tmp_path / "MURA-v1.1", studies)
    with pytest.raises(DatasetError, match="patient patient00002 is in both train and valid"):
        validate_dataset(tmp_path / "MURA-v1.1")
