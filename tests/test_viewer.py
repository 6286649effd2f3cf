"""The HTML viewer, driven in headless Chromium, and the viewer stage.

Chromium is required (Debian's ``chromium`` package): without it these tests fail, they do not
skip. The page runs its own check when opened with ``#selftest`` (move a slider, toggle the
overlay, switch the task, compare canvas pixels) and writes the result into the DOM, which
``--dump-dom`` returns; no browser-driver package is needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import PROJECT, build_tiny_pipeline, raw_params
from PIL import Image

from mrnet import PLANES, TASKS
from mrnet.config import Params
from mrnet.core.html import slice_images
from mrnet.core.io import write_json
from mrnet.inference.cam import PlaneCam
from mrnet.inference.predict import main as predict_main
from mrnet.inference.viewer import render_html, write_pages

SHAPES = {"axial": (5, 96, 96), "coronal": (7, 96, 80), "sagittal": (4, 96, 96)}


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium not found on PATH: the viewer tests drive headless Chromium; "
                    "install Debian's package with `apt-get install -y chromium`", pytrace=False)
    return exe


def run_chromium(profile: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url``; returns its stdout."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
           # The page draws and tests itself on its load event, which --dump-dom waits for;
           # the virtual-time budget is slack for timers on a slow machine.
           "--virtual-time-budget=20000", *args, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def selftest(page: Path, profile: Path) -> dict:
    """The result the page's ``#selftest`` script writes into ``<pre id="selftest">``."""
    dom = run_chromium(profile, page.resolve().as_uri() + "#selftest", "--dump-dom")
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert found and found.group(1).strip(), "the page wrote no self-test result:\n" + dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def page_data(page: Path) -> dict:
    """The JSON the viewer page embeds."""
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>',
                      page.read_text(), re.S)
    return json.loads(found.group(1))


def synthetic_exam(seed: int = 0) -> tuple[dict, dict, dict]:
    """Volumes whose slices all differ, and a distinct, non-zero CAM per task and plane."""
    rng = np.random.default_rng(seed)
    volumes = {p: (rng.integers(0, 60, s) + 30 * np.arange(s[0])[:, None, None]).astype(np.uint8)
               for p, s in SHAPES.items()}
    cams = {}
    for k, task in enumerate(TASKS):
        cams[task] = {}
        for plane, (n, h, w) in SHAPES.items():
            yy, xx = np.mgrid[:h, :w]
            cy, cx = h * (0.25 + 0.25 * k), w * (0.75 - 0.25 * k)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (h / 8) ** 2))
            peak = (k + 1) % n
            scale = np.where(np.arange(n) == peak, 1.0, 0.4)[:, None, None]
            cams[task][plane] = PlaneCam((blob * scale).astype(np.float32), peak, 2.5)
    report = {"case_id": "0042", "tasks": {
        t: {"prob": 0.2 + 0.3 * k, "intercept": 0.0,
            "planes": {p: {"prob": 0.1 * (k + 1) + 0.05 * j, "coef": 1.0, "contribution": 0.0}
                       for j, p in enumerate(PLANES)}}
        for k, t in enumerate(TASKS)}}
    return volumes, cams, report


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    volumes, cams, report = synthetic_exam()
    out = tmp_path_factory.mktemp("viewer") / "0042.html"
    out.write_text(render_html("0042", volumes, cams, report, "acl",
                               {"abnormal": 1, "acl": 1, "meniscus": 0}))
    return out


def test_page_is_self_contained(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", text)
    assert "<link" not in text and "@import" not in text
    data = page_data(page)
    assert all(u.startswith("data:image/png;base64,") for p in PLANES for u in data["slices"][p])
    assert [len(data["slices"][p]) for p in PLANES] == [SHAPES[p][0] for p in PLANES]
    assert data["peaks"]["acl"] == {p: 2 % SHAPES[p][0] for p in PLANES}
    assert page.stat().st_size < 300_000


def test_large_slices_are_downscaled() -> None:
    vol = np.random.default_rng(0).integers(0, 255, (2, 384, 320)).astype(np.uint8)
    uri = slice_images(vol)[0]
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (213, 256)  # (width, height), aspect kept
    small = slice_images(vol[:, :64, :48])[0]
    assert Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))).size == (48, 64)


@pytest.mark.browser
def test_viewer_works_in_chromium(page: Path, tmp_path: Path) -> None:
    result = selftest(page, tmp_path / "profile")
    assert result["done"] and result["errors"] == [], result
    assert result["starts_at_peak"] and result["peak_badge_shown"], result
    assert result["slider"]["to"] != result["slider"]["from"]
    assert result["slider_changed_image"] and result["peak_badge_hidden_off_peak"], result
    assert result["overlay_off_changed_image"] and result["overlay_on_restored_image"], result
    assert result["task"] != "acl" and result["task_changed_image"], result

    shot = tmp_path / "viewer.png"
    run_chromium(tmp_path / "profile", page.resolve().as_uri(), f"--screenshot={shot}",
                 "--window-size=1000,720")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (720, 1000, 3)
    # The CAM overlay is drawn: strongly coloured pixels, which grey slices alone never give.
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 120).sum() > 2000
    if os.environ.get("MRNET_VIEWER_SHOT"):  # keep the screenshot to look at
        shutil.copy(shot, os.environ["MRNET_VIEWER_SHOT"])


def test_write_pages_replaces_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "viewer"
    write_pages(out, {"0001": "a", "0002": "b"})
    write_pages(out, {"0003": "c"})
    assert sorted(p.name for p in out.iterdir()) == ["0003.html"]
    assert [p.name for p in tmp_path.iterdir()] == ["viewer"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Params:
    return build_tiny_pipeline(tmp_path_factory.getbasetemp() / "tiny-pipeline")


@pytest.mark.browser
def test_stage_and_predict_write_viewers_of_trained_models(pipeline: Params, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    raw = raw_params()
    raw["data"]["root"] = pipeline.data.root
    raw["train"]["out"] = pipeline.train.out
    raw["ensemble"]["out"] = pipeline.ensemble.out
    raw["viewer"] = {"out": "viewer", "task": "meniscus"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "viewer").mkdir()
    (tmp_path / "viewer" / "9999.html").write_text("stale")
    valid = sorted(p.stem for p in Path(pipeline.data.root, "valid", "axial").glob("*.npy"))
    # The exams of the evaluate stage's error report, listed under several tasks.
    write_json(tmp_path / "reports" / "errors.json", {
        "acl": [{"case_id": valid[3], "label": 0, "prob": 0.9, "error": "false positive"}],
        "meniscus": [{"case_id": valid[0], "label": 1, "prob": 0.1, "error": "false negative"},
                     {"case_id": valid[3], "label": 1, "prob": 0.2, "error": "false negative"}],
        "abnormal": []})

    def run_stage() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.viewer"], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(PROJECT)},
                              capture_output=True, text=True, timeout=300)

    res = run_stage()
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "viewer").iterdir()) == [
        f"{valid[0]}.html", f"{valid[3]}.html"]
    first = tmp_path / "viewer" / f"{valid[0]}.html"
    text = first.read_text()
    assert f"MRNet exam {valid[0]}" in text and '"task":"meniscus"' in text
    result = selftest(first, tmp_path / "profile")
    # Tiny models may have no positive activation for a task, so only what does not depend
    # on the learned CAMs is required here.
    assert result["done"] and result["errors"] == [], result
    assert result["starts_at_peak"] and result["slider_changed_image"], result

    # An error report naming an exam the dataset lacks: one line, the pages stay.
    pages = {p.name: p.read_bytes() for p in (tmp_path / "viewer").iterdir()}
    write_json(tmp_path / "reports" / "errors.json", {"acl": [{"case_id": "9998"}]})
    res = run_stage()
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "reports/errors.json: valid case 9998 is not in" in res.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "viewer").iterdir()} == pages

    # predict --exam ... --viewer: the same page for any exam.
    monkeypatch.chdir(tmp_path)
    exam = [str(Path(pipeline.data.root, "valid", p, f"{valid[0]}.npy")) for p in PLANES]
    predict_main(["--allow-synthetic", "--exam", *exam, "--viewer", "one.html", "--task", "meniscus",
                  "--models", pipeline.train.out])
    one, staged = page_data(tmp_path / "one.html"), page_data(first)
    assert staged.pop("labels") is not None and one.pop("labels") is None  # the stage adds them
    probs = [(one.pop("probs"), staged.pop("probs"))]
    assert one == staged
    for t in TASKS:
        assert probs[0][0][t]["prob"] == pytest.approx(probs[0][1][t]["prob"], abs=1e-9)
