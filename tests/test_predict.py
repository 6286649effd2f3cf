"""Inference on a tiny trained pipeline: the MRNet evaluation CLI, the one-exam report, CAMs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PROJECT, build_tiny_pipeline

from mrnet import PLANES, TASKS
from mrnet.config import AugmentConfig, Params
from mrnet.core.packed import PackedSet
from mrnet.core.tables import read_probs, rows
from mrnet.data.reader import load_series
from mrnet.inference.cam import plane_cam
from mrnet.inference.predict import (Predictor, exam_files, format_report, load_predictor, main,
                                     predict_cases, read_input_csv)
from mrnet.model import MRNet, MRNetConfig, normalize
from mrnet.training.cnn import exam_epoch


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Params:
    return build_tiny_pipeline(tmp_path_factory.getbasetemp() / "tiny-pipeline")


@pytest.fixture(scope="module")
def predictor(pipeline: Params) -> Predictor:
    folder = Path(pipeline.train.out)
    return load_predictor({t: folder for t in TASKS}, Path(pipeline.ensemble.out),
                          allow_synthetic=True)


def valid_ids(params: Params) -> list[str]:
    return sorted(p.stem for p in (Path(params.data.root) / "valid" / "axial").glob("*.npy"))


def pipeline_probs(params: Params, name: str) -> dict[str, float]:
    """{case_id: prob} of the valid split from ``{extract.out}/{name}.csv``."""
    valid = rows(read_probs(Path(params.extract.out) / f"{name}.csv"), "valid")
    return dict(zip(valid["case_id"], valid["prob"]))


def input_lines(params: Params, ids: list[str], cwd: Path) -> list[list[str]]:
    """Each case's three lines (official order: sagittal, coronal, axial), relative to ``cwd``."""
    root = Path(os.path.relpath(params.data.root, cwd))
    return [[str(root / "valid" / p / f"{cid}.npy") for p in ("sagittal", "coronal", "axial")]
            for cid in ids]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "mrnet.inference.predict", "--allow-synthetic", *args],
                          cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def read_output(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    # No header: every row is three numbers.
    return np.array([[float(v) for v in row] for row in rows])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- the evaluation CLI


def test_cli_rows_follow_input_and_equal_the_pipeline(pipeline: Params, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ids = valid_ids(pipeline)[::-1]  # not sorted, so input order is what is tested
    write_lines(tmp_path / "input.csv", sum(input_lines(pipeline, ids, tmp_path), []))
    res = run_cli(tmp_path, "input.csv", "out/pred.csv", "--models", pipeline.train.out)
    assert res.returncode == 0, res.stderr
    out = read_output(tmp_path / "out" / "pred.csv")
    assert out.shape == (len(ids), 3)
    assert ((out >= 0) & (out <= 1)).all()
    expected = np.array([[pipeline_probs(pipeline, f"ensemble-{t}")[c] for t in TASKS]
                         for c in ids])
    # The tiny models are nearly constant; the check below must still tell cases apart.
    assert np.abs(expected - expected[::-1]).max() > 1e-5
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)

    # Lines of a case in any order: the same bytes out (in-process: the same main()).
    rng = np.random.default_rng(0)
    shuffled = [line for case in input_lines(pipeline, ids, tmp_path)
                for line in rng.permutation(case).tolist()]
    assert shuffled != sum(input_lines(pipeline, ids, tmp_path), [])
    write_lines(tmp_path / "shuffled.csv", shuffled)
    monkeypatch.chdir(tmp_path)
    main(["--allow-synthetic", "shuffled.csv", "shuffled-out.csv", "--models", pipeline.train.out])
    assert (tmp_path / "shuffled-out.csv").read_bytes() == (tmp_path / "out/pred.csv").read_bytes()


def test_plane_probs_equal_the_extract_stage(pipeline: Params, predictor: Predictor,
                                             tmp_path: Path) -> None:
    ids = valid_ids(pipeline)
    cases = read_input_csv(write_lines(tmp_path / "in.csv",
                                       sum(input_lines(pipeline, ids, Path.cwd()), [])))
    pred = predict_cases(predictor, cases, exams_per_batch=3)
    assert pred.case_ids == ids
    for task in TASKS:
        for plane in PLANES:
            expected = pipeline_probs(pipeline, f"{task}-{plane}")
            np.testing.assert_allclose(pred.plane_probs[task, plane],
                                       [expected[c] for c in ids], atol=1e-6, rtol=0)
        expected = pipeline_probs(pipeline, f"ensemble-{task}")
        np.testing.assert_allclose(pred.probs[task], [expected[c] for c in ids], atol=1e-6,
                                   rtol=0)


def _bad_input(pipeline: Params, tmp: Path, kind: str) -> tuple[list[str], list[str]]:
    """An input CSV broken in one way; returns (extra CLI args, strings the error must name)."""
    cid = valid_ids(pipeline)[1]
    cases = input_lines(pipeline, valid_ids(pipeline)[:3], tmp)
    lines = cases[0] + cases[1] + cases[2]
    bad = tmp / "bad" / "axial" / f"{cid}.npy"
    bad.parent.mkdir(parents=True)
    axial = lines.index(cases[1][2])
    args = ["--models", str(Path(pipeline.train.out).resolve())]
    if kind == "missing-plane":
        lines.remove(cases[1][1])
        expect = [f"case {cid}", "coronal"]
    elif kind == "plane-twice":
        lines[lines.index(cases[1][1])] = str(bad.relative_to(tmp))
        np.save(bad, load_series(Path(tmp, cases[1][2])))
        expect = [f"case {cid}", "second axial"]
    elif kind == "random-bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(300))
        lines[axial] = str(bad.relative_to(tmp))
        expect = [f"case {cid}", str(bad.relative_to(tmp)), "not a readable .npy"]
    elif kind == "float32":
        np.save(bad, np.zeros((3, 48, 48), np.float32))
        lines[axial] = str(bad.relative_to(tmp))
        expect = [f"case {cid}", str(bad.relative_to(tmp)), "float32"]
    elif kind == "2d":
        np.save(bad, np.zeros((48, 48), np.uint8))
        lines[axial] = str(bad.relative_to(tmp))
        expect = [f"case {cid}", str(bad.relative_to(tmp)), "3-D"]
    elif kind == "nonexistent":
        lines[axial] = f"nowhere/axial/{cid}.npy"
        expect = [f"case {cid}", f"nowhere/axial/{cid}.npy", "not found"]
    elif kind == "no-models":
        args = ["--models", "untrained"]
        expect = ["untrained", "not found", "dvc repro"]
    else:
        raise ValueError(kind)
    write_lines(tmp / "input.csv", lines)
    return args, expect


ERRORS = ["missing-plane", "plane-twice", "random-bytes", "float32", "2d", "nonexistent",
          "no-models"]


@pytest.mark.parametrize("kind", ERRORS)
def test_bad_input_is_one_error_line_and_no_output(kind: str, pipeline: Params, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    # In-process through main(), the function the command runs (a subprocess per case would
    # spend most of the test importing torch); test_bad_input_cli_exit checks the real exit.
    args, expect = _bad_input(pipeline, tmp_path, kind)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--allow-synthetic", "input.csv", "out.csv", *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for text in expect:
        assert text in lines[0], lines[0]
    assert not (tmp_path / "out.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.csv")]


def test_bad_input_cli_exit(pipeline: Params, tmp_path: Path) -> None:
    args, expect = _bad_input(pipeline, tmp_path, "missing-plane")
    res = run_cli(tmp_path, "input.csv", "out.csv", *args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and all(t in lines[0] for t in expect), res.stderr
    assert list(tmp_path.glob("*out.csv*")) == []


def test_default_models_come_from_params(pipeline: Params, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["--allow-synthetic", "--exam",
              str(Path(pipeline.data.root, "valid", "axial", "1130.npy")),
              str(Path(pipeline.data.root, "valid", "coronal", "1130.npy")),
              str(Path(pipeline.data.root, "valid", "sagittal", "1130.npy"))])
    err = capsys.readouterr().err
    assert "params.yaml: params file not found" in err and "--models" in err
    # With a params file elsewhere, its model paths are relative to its own folder.
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "models").symlink_to(Path(pipeline.train.out).resolve())
    (proj / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    main(["--allow-synthetic", "--params", str(proj / "params.yaml"), "--json", "-", "--exam",
          str(Path(pipeline.data.root, "valid", "axial", "1130.npy")),
          str(Path(pipeline.data.root, "valid", "coronal", "1130.npy")),
          str(Path(pipeline.data.root, "valid", "sagittal", "1130.npy"))])
    report = json.loads(capsys.readouterr().out)
    assert report["case_id"] == "1130"
    assert report["tasks"]["acl"]["prob"] == pytest.approx(
        pipeline_probs(pipeline, "ensemble-acl")["1130"], abs=1e-6)


# ---------------------------------------------------------------- one exam


def test_exam_forms_and_report_contributions(pipeline: Params, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    cid = valid_ids(pipeline)[2]
    series = {p: Path(pipeline.data.root, "valid", p, f"{cid}.npy").resolve() for p in PLANES}
    flat = tmp_path / "knee"
    flat.mkdir()
    for p in PLANES:
        (flat / f"{p}.npy").write_bytes(series[p].read_bytes())
        (tmp_path / "nested" / p).mkdir(parents=True)
        (tmp_path / "nested" / p / f"{cid}.npy").write_bytes(series[p].read_bytes())
    assert exam_files([str(flat)]).case_id == "knee"
    nested = exam_files([str(tmp_path / "nested")])
    assert nested.case_id == cid and nested.paths["coronal"].parent.name == "coronal"
    assert exam_files([str(series[p]) for p in ("sagittal", "axial", "coronal")]).paths == series

    monkeypatch.chdir(tmp_path)
    models = ["--models", str(Path(pipeline.train.out).resolve())]
    main(["--allow-synthetic", "--exam", "knee", "--json", "-", *models])
    report = json.loads(capsys.readouterr().out)
    ens = json.loads(Path(pipeline.ensemble.out, "ensemble-acl.json").read_text())
    acl = report["tasks"]["acl"]
    assert acl["prob"] == pytest.approx(pipeline_probs(pipeline, "ensemble-acl")[cid], abs=1e-6)
    for p in PLANES:
        assert acl["planes"][p]["prob"] == pytest.approx(
            pipeline_probs(pipeline, f"acl-{p}")[cid], abs=1e-6)
        assert acl["planes"][p]["contribution"] == pytest.approx(
            ens["coef"][p] * acl["planes"][p]["prob"])
    logit = acl["intercept"] + sum(c["contribution"] for c in acl["planes"].values())
    assert acl["prob"] == pytest.approx(1 / (1 + np.exp(-logit)))

    table = format_report(report)
    assert table.startswith("exam knee\n")
    assert all(any(line.startswith(t) for line in table.splitlines()) for t in TASKS)
    assert f"{acl['prob']:.4f}" in table


# ---------------------------------------------------------------- CAM


def test_cam_is_on_the_input_slices_and_in_unit_range(predictor: Predictor,
                                                      pipeline: Params) -> None:
    vol = load_series(Path(pipeline.data.root, "valid", "sagittal", "1131.npy"))
    for shape in (vol.shape, (vol.shape[0], 80, 72)):  # also a size the model never saw
        v = vol if shape == vol.shape else np.resize(vol, shape).astype(np.uint8)
        pc = plane_cam(predictor.models["acl", "sagittal"], v, 64)
        assert pc.cam.shape == v.shape and pc.cam.dtype == np.float32
        assert pc.cam.min() >= 0.0 and pc.cam.max() <= 1.0
        assert 0 <= pc.peak_slice < v.shape[0]
        if pc.raw_max > 0:  # normalised per plane: the top activation is 1 (up to resampling)
            assert pc.cam.max() > 0.5


def test_cam_without_final_pool_adds_up_to_the_logit() -> None:
    torch.manual_seed(0)
    model = MRNet(MRNetConfig("resnet18")).eval()
    x = normalize(torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8), torch.tensor([1]))
    with torch.no_grad():
        cam = model.cam(x)
        assert cam.shape == (1, 2, 2)  # resnet18's own last feature map at 64 px
        # One slice, average pooling: the CAM's mean plus the bias is the logit.
        logit = model(x)
    assert (cam.mean() + model.classifier.bias).item() == pytest.approx(logit.item(), abs=1e-4)


def test_alexnet_cam_keeps_a_layout_at_64_px() -> None:
    torch.manual_seed(0)
    model = MRNet().eval()
    x = normalize(torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8), torch.tensor([2]))
    with torch.no_grad():
        assert model.slice_features(x).shape[2:] == (1, 1)  # after AlexNet's last pool
        assert model.cam(x).shape == (2, 3, 3)  # the CAM is taken before it


def _lesion_phantoms(n: int, rng: np.random.Generator, slices: int = 6, size: int = 64):
    """Noisy volumes with dim distractor blobs; odd exams get one bright disc on one slice.

    Returns:
        (volumes, labels, lesions): lesions[i] is (slice, row, col) of exam i's disc, or None.
    """
    yy, xx = np.mgrid[:size, :size]
    vols, labels, lesions = [], [], []
    for i in range(n):
        vol = rng.uniform(60, 120) + rng.normal(0, 12, (slices, size, size))
        for _ in range(3):
            cy, cx = rng.uniform(8, size - 8, 2)
            vol[:, (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 8) ** 2] += 30
        lesion = None
        if i % 2:
            s, (cy, cx) = int(rng.integers(0, slices)), rng.uniform(12, size - 12, 2)
            vol[s][(yy - cy) ** 2 + (xx - cx) ** 2 < 25] += 110
            lesion = (s, cy, cx)
        vols.append(np.clip(vol, 0, 255).astype(np.uint8))
        labels.append(i % 2)
        lesions.append(lesion)
    return vols, labels, lesions


def test_learned_cam_points_at_the_lesion() -> None:
    """Once a model has learned planted lesions, its CAM peaks near them, on their slice."""
    rng = np.random.default_rng(0)
    vols, labels, _ = _lesion_phantoms(24, rng)
    counts = torch.tensor([len(v) for v in vols])
    data = PackedSet(torch.from_numpy(np.concatenate(vols)), torch.cumsum(counts, 0) - counts,
                   counts, [str(i) for i in range(len(vols))],
                   torch.tensor(labels, dtype=torch.float32))
    torch.manual_seed(0)
    model = MRNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        exam_epoch(model, data, opt, 1.0, 4, AugmentConfig(0.0, 0.0, 0.0), gen,
                        torch.device("cpu"))
    test_vols, _, lesions = _lesion_phantoms(16, rng)
    yy, xx = np.mgrid[:64, :64]
    d_peak, d_random, on_slice = [], [], 0
    for vol, lesion in zip(test_vols, lesions):
        if lesion is None:
            continue
        s, cy, cx = lesion
        pc = plane_cam(model, vol, 64)
        py, px = np.unravel_index(pc.cam[s].argmax(), pc.cam[s].shape)
        d_peak.append(np.hypot(py - cy, px - cx))
        d_random.append(np.hypot(yy - cy, xx - cx).mean())  # a uniformly random location
        on_slice += pc.peak_slice == s
    assert np.mean(d_peak) < 0.7 * np.mean(d_random), (d_peak, d_random)
    assert on_slice >= 6, on_slice  # of 8; chance is 1 in 6


# ---------------------------------------------------------------- calls, prevalence, provenance


def test_calls_at_the_shipped_operating_point(pipeline: Params, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    ids = valid_ids(pipeline)
    monkeypatch.chdir(tmp_path)
    lines = [str(Path(pipeline.data.root, "valid", p, f"{c}.npy")) for c in ids for p in PLANES]
    write_lines(tmp_path / "input.csv", lines)
    models = ["--models", str(Path(pipeline.train.out).resolve())]
    main(["--allow-synthetic", "input.csv", "out.csv", "--calls", "calls.csv", *models])
    probs = read_output(tmp_path / "out.csv")
    assert probs.shape == (len(ids), 3)  # the official output stays three numbers a row
    calls = (tmp_path / "calls.csv").read_text().splitlines()
    assert calls[0] == "case_id,abnormal,acl,meniscus"
    for k, task in enumerate(TASKS):
        threshold = json.loads(Path(pipeline.ensemble.out, f"ensemble-{task}.json")
                               .read_text())["operating_point"]["threshold"]
        want = [str(int(p >= threshold)) for p in probs[:, k]]
        assert [row.split(",")[1 + k] for row in calls[1:]] == want
    assert [row.split(",")[0] for row in calls[1:]] == ids

    main(["--allow-synthetic", "--exam", *lines[:3], "--json", "-", *models])
    report = json.loads(capsys.readouterr().out)
    for task, r in report["tasks"].items():
        assert r["call"] == ("positive" if r["prob"] >= r["threshold"] else "negative")
        assert r["threshold_rule"] == "youden on train"
    main(["--allow-synthetic", "--exam", *lines[:3], *models])
    table = capsys.readouterr().out
    acl = report["tasks"]["acl"]
    assert f"{acl['call']} ({acl['threshold']:.4f})" in table


def test_prevalence_shift_matches_a_hand_computation(pipeline: Params, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    ids = valid_ids(pipeline)
    exam = [str(Path(pipeline.data.root, "valid", p, f"{ids[1]}.npy")) for p in PLANES]
    models = ["--models", str(Path(pipeline.train.out).resolve())]
    main(["--allow-synthetic", "--exam", *exam, "--json", "-", *models])
    base = json.loads(capsys.readouterr().out)["tasks"]
    main(["--allow-synthetic", "--exam", *exam, "--json", "-", "--prevalence", "acl=0.45",
          *models])
    shifted = json.loads(capsys.readouterr().out)["tasks"]
    fit = json.loads(Path(pipeline.ensemble.out, "ensemble-acl.json").read_text())
    f, t, p = fit["fit_prevalence"], 0.45, base["acl"]["prob"]
    odds = p / (1 - p) * (t / (1 - t)) / (f / (1 - f))
    assert shifted["acl"]["prob"] == pytest.approx(odds / (1 + odds), rel=1e-9)
    assert shifted["acl"]["prevalence"] == 0.45 and base["acl"]["prevalence"] == f
    assert shifted["acl"]["call"] == base["acl"]["call"]  # the threshold moved with it
    assert shifted["meniscus"] == base["meniscus"]  # only the named task moves
    with pytest.raises(SystemExit):
        main(["--allow-synthetic", "--exam", *exam, "--prevalence", "acl=1.2", *models])
    assert "--prevalence acl=1.2: a prevalence is in (0, 1)" in capsys.readouterr().err


def test_phantom_models_are_refused_without_the_flag(pipeline: Params, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    ckpt = torch.load(Path(pipeline.train.out) / "acl-sagittal.pt", weights_only=True)
    record = ckpt["config"]["provenance"]
    assert record["synthetic"] is True and record["data_root"] == pipeline.data.root
    from mrnet.core.runtime import use_bf16
    resolved = use_bf16(ckpt["config"]["train"]["precision"], torch.device("cpu"))
    assert record["precision"] == ("bf16" if resolved else "fp32")  # never "auto"
    assert record["device_type"] == "cpu"
    assert record["torch_version"] == torch.__version__ and len(record["dataset_fingerprint"]) == 64
    ens = json.loads(Path(pipeline.ensemble.out, "ensemble-acl.json").read_text())
    assert ens["provenance"]["dataset_fingerprint"] == record["dataset_fingerprint"]
    exam = [str(Path(pipeline.data.root, "valid", p, f"{valid_ids(pipeline)[0]}.npy"))
            for p in PLANES]
    with pytest.raises(SystemExit) as exc:
        main(["--exam", *exam, "--models", str(Path(pipeline.train.out).resolve())])
    assert exc.value.code != 0
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "trained on the synthetic phantoms" in lines[0]
    assert "--allow-synthetic" in lines[0]
