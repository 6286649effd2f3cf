"""Real scanner exports of one exam: every standard transfer syntax, Enhanced MR multi-frame
files and mirrored or transposed in-plane orientations must import to the very arrays of the
classic uncompressed one-file-per-slice export."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_dicom import AXIAL, CORONAL, SAGITTAL, new_file_dataset, write_exam

from mrnet import PLANES
from mrnet.data.dicom import DicomError, import_exam

# Small, with every case a flip can get wrong: a non-square matrix (36 x 32) and one whose
# padding to a square is odd (39 rows padded to 48), so a mirrored export must be put back
# before padding, not after.
EXPORT = [(3, "SAG T2", SAGITTAL, 5, (36, 32), (2.0, 2.0)),
          (5, "COR T1", CORONAL, 4, (32, 32), (2.0, 2.0)),
          (7, "AX PD", AXIAL, 4, (39, 48), (2.0, 2.0))]
SIZE = 64


def arrays(out: Path) -> dict[str, bytes]:
    """The three written series, byte for byte."""
    return {plane: (out / f"{plane}.npy").read_bytes() for plane in PLANES}


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], dict]:
    """The classic export (uncompressed, one file per slice, the usual orientation), its
    import's series and its dicom.json."""
    folder = tmp_path_factory.mktemp("classic") / "exam"
    write_exam(folder, series=EXPORT, localizer=False, texture=400)
    out = folder.parent / "out"
    sidecar = import_exam(folder, out, size=SIZE)
    return folder, arrays(out), sidecar


def reexport(classic_folder: Path, dest: Path, change: Callable[[Dataset], Dataset]) -> Path:
    """A copy of the classic export with ``change`` applied to every file's dataset."""
    shutil.copytree(classic_folder, dest)
    for path in sorted(dest.rglob("IM*")):
        change(pydicom.dcmread(path)).save_as(path, enforce_file_format=True)
    return dest


# ---------------------------------------------------------------- transfer syntaxes


def gdcm_encode(ds: Dataset, syntax: UID, scratch: Path) -> Dataset:
    """``ds`` with its pixel data encoded by GDCM, for the JPEG Lossless syntaxes that
    pydicom has no encoder for. Only the encoded frame is taken from GDCM's file; every other
    element stays as pydicom wrote it."""
    import gdcm

    names = {JPEGLosslessSV1: "JPEGLosslessProcess14_1", JPEGLossless: "JPEGLosslessProcess14"}
    src, dst = scratch / "raw.dcm", scratch / "encoded.dcm"
    ds.save_as(src, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, names[syntax])))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    encoded = pydicom.dcmread(dst)
    assert encoded.file_meta.TransferSyntaxUID == syntax
    set_frames(ds, syntax, list(generate_frames(encoded.PixelData, number_of_frames=1)))
    return ds


def set_frames(ds: Dataset, syntax: UID, frames: list[bytes]) -> None:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"


def encoder(syntax: UID, scratch: Path) -> Callable[[Dataset], Dataset]:
    def encode(ds: Dataset) -> Dataset:
        if syntax in (JPEGLosslessSV1, JPEGLossless):
            return gdcm_encode(ds, syntax, scratch)
        ds.compress(syntax)  # pydicom's own RLE encoder, CharLS (pyjpegls), openjpeg
        return ds
    return encode


@pytest.fixture
def runtime_decoders() -> Iterator[None]:
    """Decode with the project's runtime dependencies only: GDCM, installed for the tests to
    encode with, must not be what makes an import work."""
    gdcm_plugin = ("pydicom.pixels.decoders.gdcm", "_decode_frame")
    removed = []
    for syntax in (*LOSSLESS.values(), JPEGBaseline8Bit):
        decoder = get_decoder(syntax)
        if "gdcm" in decoder.available_plugins:
            decoder.remove_plugin("gdcm")
            removed.append(decoder)
        assert decoder.available_plugins, f"no runtime decoder for {syntax.name}"
    yield
    for decoder in removed:
        decoder.add_plugin("gdcm", gdcm_plugin)


LOSSLESS = {"rle": RLELossless, "jpeg-lossless-sv1": JPEGLosslessSV1,
            "jpeg-lossless": JPEGLossless, "jpeg-ls": JPEGLSLossless,
            "jpeg2000-lossless": JPEG2000Lossless}


@pytest.mark.parametrize("syntax", LOSSLESS.values(), ids=LOSSLESS.keys())
def test_every_lossless_syntax_imports_to_the_uncompressed_arrays(
        classic: tuple[Path, dict, dict], tmp_path: Path, syntax: UID,
        runtime_decoders: None) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    folder = reexport(classic[0], tmp_path / "exam", encoder(syntax, scratch))
    files = sorted(folder.rglob("IM*"))
    assert {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
            for p in files} == {syntax}
    sidecar = import_exam(folder, tmp_path / "out", size=SIZE)
    assert arrays(tmp_path / "out") == classic[1]
    assert sidecar["planes"] == classic[2]["planes"]


def test_jpeg_baseline_imports_within_its_loss(classic: tuple[Path, dict, dict], tmp_path: Path,
                                               runtime_decoders: None) -> None:
    from PIL import Image

    def eight_bit(ds: Dataset) -> Dataset:  # JPEG Baseline holds 8-bit samples only
        pixels = (ds.pixel_array // 4).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.tobytes()
        return ds

    def baseline(ds: Dataset) -> Dataset:
        buf = io.BytesIO()
        Image.fromarray(ds.pixel_array, mode="L").save(buf, format="JPEG", quality=95)
        set_frames(ds, JPEGBaseline8Bit, [buf.getvalue()])
        return ds

    raw = reexport(classic[0], tmp_path / "raw", eight_bit)
    lossy = reexport(raw, tmp_path / "lossy", baseline)
    import_exam(raw, tmp_path / "raw-out", size=SIZE)
    import_exam(lossy, tmp_path / "lossy-out", size=SIZE)
    for plane in PLANES:
        a = np.load(tmp_path / "raw-out" / f"{plane}.npy").astype(int)
        b = np.load(tmp_path / "lossy-out" / f"{plane}.npy").astype(int)
        diff = np.abs(a - b)
        # Quality 95 on 8-bit samples moves a pixel by a few grey levels (about 0.5 on
        # average here, 6 at most), and the window stretches the stored range about 1:1.
        assert diff.mean() < 1 and diff.max() <= 8, (plane, diff.mean(), diff.max())
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_a_known_syntax_whose_decoders_are_missing_says_what_to_install(
        classic: tuple[Path, dict, dict], tmp_path: Path) -> None:
    folder = reexport(classic[0], tmp_path / "exam", encoder(JPEGLSLossless, tmp_path))
    decoder = get_decoder(JPEGLSLossless)
    plugins = {"gdcm": ("pydicom.pixels.decoders.gdcm", "_decode_frame"),
               "pyjpegls": ("pydicom.pixels.decoders.pyjpegls", "_decode_frame"),
               "pylibjpeg": ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame")}
    removed = [label for label in decoder.available_plugins if label in plugins]
    for label in removed:  # as in an environment without the decoder packages
        decoder.remove_plugin(label)
    try:
        with pytest.raises(DicomError) as info:
            import_exam(folder, tmp_path / "out", size=SIZE)
    finally:
        for label in removed:
            decoder.add_plugin(label, plugins[label])
    message = str(info.value)
    assert re.match(r"^\S+IM\w+: cannot decode the pixel data of series \d '(AX PD|COR T1|SAG "
                    r"T2)' \(transfer syntax JPEG-LS Lossless Image Compression: .*\); install "
                    r"a decoder for it \(pylibjpeg with pylibjpeg-libjpeg and "
                    r"pylibjpeg-openjpeg, and pyjpegls, .*\) or export uncompressed$", message), \
        message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLSLossless], ids=["jpeg", "jpeg-ls"])
def test_a_jpeg_frame_cut_short_is_damaged_not_made_up(classic: tuple[Path, dict, dict],
                                                       tmp_path: Path, syntax: UID) -> None:
    # The JPEG and JPEG-LS decoders fill a truncated frame's missing pixels in silently.
    folder = reexport(classic[0], tmp_path / "exam", encoder(syntax, tmp_path))
    victim = sorted(folder.rglob("IM*"))[3]
    ds = pydicom.dcmread(victim)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    set_frames(ds, syntax, [frame[: len(frame) // 2 * 2 - 40]])
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(DicomError) as info:
        import_exam(folder, tmp_path / "out", size=SIZE)
    assert re.match(rf"^{re.escape(str(victim))}: the pixel data of series \d '[A-Z0-9 ]+' is "
                    rf"damaged or cut short \(transfer syntax {re.escape(syntax.name)}: frame 1 "
                    r"ends without its end-of-image marker\); re-export the series$",
                    str(info.value)), str(info.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- in-plane orientation


def reverse_rows(ds: Dataset) -> Dataset:
    """The same slice stored with its row direction reversed: each row the other way."""
    r = np.array(ds.ImageOrientationPatient[:3], float)
    corner = np.array(ds.ImagePositionPatient, float) + r * (ds.Columns - 1) * ds.PixelSpacing[1]
    return restored(ds, ds.pixel_array[:, ::-1], [*(-r), *ds.ImageOrientationPatient[3:]],
                    corner)


def reverse_columns(ds: Dataset) -> Dataset:
    """The same slice stored with its column direction reversed: the bottom row first."""
    c = np.array(ds.ImageOrientationPatient[3:], float)
    corner = np.array(ds.ImagePositionPatient, float) + c * (ds.Rows - 1) * ds.PixelSpacing[0]
    return restored(ds, ds.pixel_array[::-1], [*ds.ImageOrientationPatient[:3], *(-c)], corner)


def transpose(ds: Dataset) -> Dataset:
    """The same slice stored transposed: its rows are the classic columns."""
    orientation = [*ds.ImageOrientationPatient[3:], *ds.ImageOrientationPatient[:3]]
    ds.PixelSpacing = [ds.PixelSpacing[1], ds.PixelSpacing[0]]
    return restored(ds, ds.pixel_array.T, orientation, np.array(ds.ImagePositionPatient))


def restored(ds: Dataset, pixels: np.ndarray, orientation: list, corner: np.ndarray) -> Dataset:
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.ImageOrientationPatient = [float(v) + 0.0 for v in orientation]  # no -0.0
    ds.ImagePositionPatient = [round(float(v), 4) for v in corner]
    return ds


@pytest.mark.parametrize("change, applied", [
    (reverse_rows, ["flip left-right"]), (reverse_columns, ["flip top-bottom"]),
    (lambda ds: reverse_columns(reverse_rows(ds)), ["flip left-right", "flip top-bottom"]),
    (transpose, ["transpose"]),
], ids=["row-direction-reversed", "column-direction-reversed", "both", "transposed"])
def test_a_mirrored_or_turned_export_gives_the_classic_arrays(
        classic: tuple[Path, dict, dict], tmp_path: Path, change: Callable,
        applied: list[str]) -> None:
    folder = reexport(classic[0], tmp_path / "exam", change)
    sidecar = import_exam(folder, tmp_path / "out", size=SIZE)
    assert arrays(tmp_path / "out") == classic[1]
    for plane in PLANES:
        ours, theirs = sidecar["planes"][plane], classic[2]["planes"][plane]
        assert ours["in_plane"]["applied"] == applied
        assert ours["in_plane"]["written"] == theirs["in_plane"]["written"]
        assert ours["in_plane"]["stored"] != theirs["in_plane"]["stored"]
        rest = {k: v for k, v in ours.items() if k not in ("in_plane", "matrix",
                                                           "pixel_spacing_mm")}
        assert rest == {k: v for k, v in theirs.items() if k in rest}
        assert ours["matrix"] == theirs["matrix"] or applied == ["transpose"]


def test_the_classic_export_is_written_as_stored_and_says_so(
        classic: tuple[Path, dict, dict]) -> None:
    runs = {plane: classic[2]["planes"][plane]["in_plane"] for plane in PLANES}
    assert runs["sagittal"]["written"] == {"rows": "anterior to posterior",
                                           "columns": "head to foot"}
    assert runs["coronal"]["written"] == {"rows": "right to left", "columns": "head to foot"}
    assert runs["axial"]["written"] == {"rows": "right to left",
                                        "columns": "anterior to posterior"}
    assert all(r["applied"] == [] and r["stored"] == r["written"] for r in runs.values())


def test_a_series_with_one_slice_mirrored_is_not_stacked(classic: tuple[Path, dict, dict],
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "exam"
    shutil.copytree(classic[0], folder)
    axial = [p for p in sorted(folder.rglob("IM*"))
             if pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber == 7]
    reverse_rows(pydicom.dcmread(axial[1])).save_as(axial[1], enforce_file_format=True)
    with pytest.raises(DicomError, match=r"no usable axial series \(found: .*series 7 'AX PD' "
                                         r"\(slices whose rows or columns run different ways"):
        import_exam(folder, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- Enhanced MR


def as_enhanced(classic_folder: Path, dest: Path, orientation_in: str = "shared",
                syntax: UID | None = None, seed: int = 0) -> dict[int, Path]:
    """The classic export rewritten as Enhanced MR: one multi-frame file per series, frames
    in a shuffled order, positions and rescale per frame, pixel spacing (and orientation, or
    per frame with ``orientation_in="per-frame"``) in the shared functional groups.

    Returns:
        {series number: its file}.
    """
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    def group(**values: object) -> Dataset:
        item = Dataset()
        for name, value in values.items():
            setattr(item, name, value)
        return item

    series: dict[int, list[Dataset]] = {}
    for path in sorted(classic_folder.rglob("IM*")):
        ds = pydicom.dcmread(path)
        series.setdefault(int(ds.SeriesNumber), []).append(ds)
    rng = np.random.default_rng(seed)
    out = {}
    dest.mkdir(parents=True)
    for number, slices in series.items():
        slices = [slices[i] for i in rng.permutation(len(slices))]
        first = slices[0]
        ds = new_file_dataset(EnhancedMRImageStorage)
        for name in ("Modality", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
                     "SeriesDescription", "Rows", "Columns", "SamplesPerPixel",
                     "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
                     "PixelRepresentation"):
            setattr(ds, name, first.get(name))
        ds.ImageType = [*first.ImageType[:3], "NONE"]
        ds.InstanceNumber = 1
        ds.NumberOfFrames = len(slices)
        shared = group(PixelMeasuresSequence=Sequence([group(
            PixelSpacing=first.PixelSpacing, SliceThickness=3.5)]))
        if orientation_in == "shared":
            shared.PlaneOrientationSequence = Sequence([group(
                ImageOrientationPatient=first.ImageOrientationPatient)])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        frames = []
        for k, s in enumerate(slices):
            item = group(
                FrameContentSequence=Sequence([group(InStackPositionNumber=k + 1)]),
                PlanePositionSequence=Sequence([group(
                    ImagePositionPatient=s.ImagePositionPatient)]),
                PixelValueTransformationSequence=Sequence([group(
                    RescaleSlope=s.RescaleSlope, RescaleIntercept=s.RescaleIntercept,
                    RescaleType="US")]))
            if orientation_in == "per-frame":
                item.PlaneOrientationSequence = Sequence([group(
                    ImageOrientationPatient=s.ImageOrientationPatient)])
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
        ds.PixelData = b"".join(s.PixelData for s in slices)
        if syntax is not None:
            ds.compress(syntax)
        out[number] = dest / "DICOM" / f"IM{number:04d}"
        out[number].parent.mkdir(exist_ok=True)
        ds.save_as(out[number], enforce_file_format=True)
    return out


@pytest.mark.parametrize("orientation_in, syntax", [
    ("shared", None), ("per-frame", None), ("shared", JPEGLSLossless),
], ids=["shared-orientation", "per-frame-orientation", "jpeg-ls"])
def test_enhanced_mr_imports_to_the_classic_arrays(classic: tuple[Path, dict, dict],
                                                   tmp_path: Path, orientation_in: str,
                                                   syntax: UID | None) -> None:
    files = as_enhanced(classic[0], tmp_path / "exam", orientation_in, syntax)
    assert sorted(p.name for p in (tmp_path / "exam").rglob("*") if p.is_file()) == \
        sorted(p.name for p in files.values())  # one file per series, nothing else
    sidecar = import_exam(tmp_path / "exam", tmp_path / "out", size=SIZE)
    assert arrays(tmp_path / "out") == classic[1]
    for plane in PLANES:
        ours, theirs = sidecar["planes"][plane], classic[2]["planes"][plane]
        number = ours["series_number"]
        # Frames in slice order, whatever their order in the file (write_exam's positions
        # lie on the plane's axis and rise in anatomical order).
        ds = pydicom.dcmread(files[number])
        position = {k + 1: float(sum(item.PlanePositionSequence[0].ImagePositionPatient))
                    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence)}
        assert list(position.values()) != sorted(position.values())  # shuffled in the file
        assert ours["files"] == [f"DICOM/{files[number].name} frame {k}"
                                 for k in sorted(position, key=position.get)]
        rest = {k: v for k, v in ours.items() if k not in ("files", "series_uid")}
        assert rest == {k: v for k, v in theirs.items() if k in rest}


def drop_position(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence


def claim_more_frames(ds: Dataset) -> None:
    ds.NumberOfFrames = len(ds.PerFrameFunctionalGroupsSequence) + 1


def classic_multi_frame(ds: Dataset) -> None:  # frames, but no functional groups at all
    first = ds.PerFrameFunctionalGroupsSequence[0]
    ds.ImagePositionPatient = first.PlanePositionSequence[0].ImagePositionPatient
    ds.ImageOrientationPatient = \
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    del ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence


def nan_position(ds: Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient = \
        ["nan", "nan", "nan"]


def nan_slope(ds: Dataset) -> None:
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence[0].RescaleSlope = \
        "nan"


def short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4 * 3]


@pytest.mark.parametrize("damage, match", [
    (drop_position, (r"no usable axial series \(found: .*series 7 'AX PD' \(no "
                    r"PlaneOrientationSequence/PlanePositionSequence for IM0007 frame 2 \(in its "
                    r"per-frame or shared functional groups\)\)")),
    (claim_more_frames, (r"no usable axial series \(found: .*series 7 'AX PD' \(IM0007 is a "
                        r"multi-frame file of NumberOfFrames 5 with 4 "
                        r"PerFrameFunctionalGroupsSequence items, so without a position for "
                        r"each frame\)")),
    (classic_multi_frame, (r"series 7 'AX PD' \(IM0007 is a multi-frame file of NumberOfFrames 4 "
                          r"with 0 PerFrameFunctionalGroupsSequence items")),
    (nan_position, (r"series 7 'AX PD' \(axial\): IM0007 frame 3 has ImagePositionPatient "
                   r"\[nan, nan, nan\] is not finite; re-export the series$")),
    (nan_slope, r"IM0007: RescaleSlope nan of frame 2 in series 7 'AX PD' is not finite"),
    (short_pixels, r"IM0007: the pixel data of series 7 'AX PD' is damaged or cut short"),
], ids=["frame-without-position", "more-frames-than-groups", "no-functional-groups",
        "nan-position", "nan-rescale", "pixels-cut-short"])
def test_enhanced_mr_that_cannot_be_read_is_one_named_error(
        classic: tuple[Path, dict, dict], tmp_path: Path, damage: Callable[[Dataset], None],
        match: str, capsys: pytest.CaptureFixture) -> None:
    from mrnet.cli import cmd_import_dicom

    files = as_enhanced(classic[0], tmp_path / "exam")
    ds = pydicom.dcmread(files[7])
    damage(ds)
    ds.save_as(files[7], enforce_file_format=True)
    with pytest.raises(SystemExit) as exc:
        cmd_import_dicom([str(tmp_path / "exam"), str(tmp_path / "out"), "--size", "32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(match, err[0]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam"]  # nothing written
