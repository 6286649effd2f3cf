"""Prediction on new MURA studies: a folder of views in, probability, call and CAM viewer out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_mura_train import tiny_params

from mrnet.mura.config import SynthesizeConfig
from mrnet.mura.data import read_split
from mrnet.mura.model import load_model
from mrnet.mura.predict import extract, main, predict_studies
from mrnet.mura.prepare import prepare
from mrnet.mura.synthetic import generate
from mrnet.mura.train import train_mura
from mrnet.mura.viewer import view_cams

TINY = SynthesizeConfig(seed=2, n_train=10, n_valid=7, image_size=40, views_min=1, views_max=4,
                        rgb_fraction=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("mura_predict")
    generate(base / "MURA-v1.1", TINY)
    prepare(base / "MURA-v1.1", base / "prepared", 64)
    params = tiny_params(base, precision="fp32")
    train_mura(params, live_dir=False)
    return base, params


def test_extract_tables_are_keyed_by_study_and_average_views(trained) -> None:
    base, params = trained
    studies, views = extract(params)
    valid = read_split(base / "MURA-v1.1", "valid").studies
    v = studies[studies["split"] == "valid"]
    assert v["study_id"].tolist() == valid["study_id"].tolist()
    assert v["n_views"].tolist() == valid["n_views"].tolist()
    for _, s in v.iterrows():
        mine = views[(views["split"] == "valid") & (views["study_id"] == s["study_id"])]
        assert len(mine) == s["n_views"]
        assert s["prob"] == pytest.approx(mine["prob"].mean(), abs=1e-9)
    assert len(studies) == 17 and studies["study_id"].map(type).eq(str).all()


def test_new_study_folder_gives_the_pipelines_probability(trained, tmp_path, capsys) -> None:
    base, params = trained
    data = read_split(base / "MURA-v1.1", "valid")
    study = data.studies.iloc[0]
    folder = base / "MURA-v1.1" / "valid" / study["study_id"]
    # the same study copied elsewhere: nothing but a folder of PNGs
    copy = tmp_path / "new_study"
    shutil.copytree(folder, copy)
    out = tmp_path / "report.json"
    html = tmp_path / "viewer.html"
    main([str(copy), "--model", str(base / "models" / "model.pt"), "--json", str(out),
          "--viewer", str(html), "--device", "cpu"])
    report = json.loads(out.read_text())
    studies, _ = extract(params)
    expected = studies.loc[(studies["split"] == "valid")
                           & (studies["study_id"] == study["study_id"]), "prob"].item()
    assert report["prob"] == pytest.approx(expected, abs=1e-5)
    assert report["prob"] == pytest.approx(np.mean([v["prob"] for v in report["views"]]))
    assert report["call"] == ("abnormal" if report["prob"] > 0.5 else "normal")
    assert report["threshold"] == 0.5 and report["n_views"] == study["n_views"]
    assert report["model"]["backbone"] == "alexnet" and report["model"]["train_studies"] == 10
    printed = capsys.readouterr().out
    assert f"study new_study: P(abnormal) {report['prob']:.3f}" in printed
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2 * study["n_views"]  # view + CAM each
    assert "MURA study new_study" in page and "http" not in page.split("<script id=\"data\"")[0]


def test_cams_have_each_views_shape(trained) -> None:
    base, _ = trained
    model, ckpt = load_model(base / "models" / "model.pt")
    views = [np.full((40, 52), 30, np.uint8), np.full((47, 38), 200, np.uint8)]
    cams, top = view_cams(model, views, ckpt["config"]["image_size"])
    assert [c.shape for c in cams] == [(40, 52), (47, 38)]
    assert all(c.min() >= 0 and c.max() <= 1 for c in cams)
    probs = predict_studies(model, 64, [views, views[:1]])
    assert [len(p) for p in probs] == [2, 1] and probs[0][0] == pytest.approx(probs[1][0])


def test_mura_csv_format(trained, tmp_path, monkeypatch) -> None:
    base, params = trained
    monkeypatch.chdir(base)
    lines = (base / "MURA-v1.1" / "valid_image_paths.csv").read_text().splitlines()
    # the input lists paths relative to the current directory, here the folder holding MURA-v1.1
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    main(["--csv", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"),
          "--model", str(base / "models" / "model.pt"), "--device", "cpu"])
    rows = (tmp_path / "out.csv").read_text().splitlines()
    folders = list(dict.fromkeys(line.rpartition("/")[0] + "/" for line in lines))
    assert [r.rsplit(",", 1)[0] for r in rows] == folders
    # Each call is the study's probability (the extract stage's) against the threshold: 0.5 by
    # default, and --threshold set in the widest gap between the probabilities, so that both
    # calls occur and no probability sits near it.
    studies, _ = extract(params)
    valid = studies[studies["split"] == "valid"].set_index("study_id")["prob"]
    probs = [valid[f.removeprefix("MURA-v1.1/valid/").rstrip("/")] for f in folders]
    assert [r.rsplit(",", 1)[1] for r in rows] == [str(int(p > 0.5)) for p in probs]
    ranked = np.sort(probs)
    gap = int(np.argmax(np.diff(ranked)))
    assert ranked[gap + 1] - ranked[gap] > 1e-4
    threshold = float(ranked[gap] + ranked[gap + 1]) / 2
    main(["--csv", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--threshold",
          repr(threshold), "--model", str(base / "models" / "model.pt"), "--device", "cpu"])
    calls = [r.rsplit(",", 1)[1] for r in (tmp_path / "out.csv").read_text().splitlines()]
    assert calls == [str(int(p > threshold)) for p in probs] and {"0", "1"} <= set(calls)


def test_bad_inputs_end_in_one_line_and_no_output(trained, tmp_path, capsys) -> None:
    base, _ = trained
    empty = tmp_path / "empty_study"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_:
        main([str(empty), "--model", str(base / "models" / "model.pt")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {empty}: no .png view in the study folder"
    bad = tmp_path / "bad_study"
    bad.mkdir()
    (bad / "image1.png").write_bytes(b"not a png")
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit):
        main([str(bad), "--model", str(base / "models" / "model.pt"), "--json", str(out)])
    assert "image1.png: not a readable PNG image" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([str(next((base / "MURA-v1.1" / "valid").glob("XR_*/*/study*"))),
              "--model", str(tmp_path / "none.pt")])
    assert f"error: {tmp_path / 'none.pt'}: MURA checkpoint not found" in capsys.readouterr().err
