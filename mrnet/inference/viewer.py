"""A self-contained HTML viewer of one exam: slices, CAM overlays and the predicted probabilities.

The page needs no server and nothing from the network: every slice is an embedded PNG data URI
(downscaled to at most :data:`MAX_SLICE_PX` px), every CAM overlay a small RGBA PNG, and the
script and style are inline. It shows the three planes side by side, each with a slider that
starts at the slice where the selected task's CAM peaks (marked under the slider and next to
the slice number), a task selector, a checkbox for the CAM overlay, and the ensemble and
per-plane probabilities of all three tasks.

Opening the page with ``#selftest`` appended to its URL runs a small in-page check (move a
slider, toggle the overlay, switch the task, compare canvas pixels) and writes the result as
JSON into ``<pre id="selftest">``; the test suite reads it with headless Chromium.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrnet import PLANES, TASKS
from mrnet.core.html import PAGE_HEAD, overlay_images, slice_images
from mrnet.core.io import atomic_dir
from mrnet.inference.cam import PlaneCam, plane_cam


def exam_cams(predictor: Any, volumes: Mapping[str, np.ndarray]) -> dict[str, dict[str, PlaneCam]]:
    """The CAM of every (task, plane) CNN of a :class:`mrnet.inference.predict.Predictor` for one exam."""
    return {t: {p: plane_cam(predictor.models[t, p], volumes[p], predictor.image_size[t, p],
                             predictor.device) for p in PLANES} for t in TASKS}


def render_html(case_id: str, volumes: Mapping[str, np.ndarray],
                cams: Mapping[str, Mapping[str, PlaneCam]], report: Mapping[str, Any],
                task: str = "acl", labels: Mapping[str, int] | None = None) -> str:
    """The viewer page of one exam.

    Args:
        case_id: shown in the title.
        volumes: {plane: uint8 (S, H, W)} series.
        cams: {task: {plane: PlaneCam}} with CAMs shaped like the series.
        report: :func:`mrnet.inference.predict.exam_report` of the exam (probabilities).
        task: the task whose CAM is shown first.
        labels: optional reference labels {task: 0/1}, shown next to the probabilities.
    Returns:
        The HTML text.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    for t in TASKS:
        for p in PLANES:
            if cams[t][p].cam.shape != volumes[p].shape:
                raise ValueError(f"CAM of {t}-{p} has shape {cams[t][p].cam.shape}, "
                                 f"series {volumes[p].shape}")
    data = {
        "case_id": case_id, "tasks": list(TASKS), "planes": list(PLANES), "task": task,
        "shape": {p: list(volumes[p].shape) for p in PLANES},
        "slices": {p: slice_images(volumes[p]) for p in PLANES},
        "overlays": {t: {p: overlay_images(cams[t][p].cam) for p in PLANES} for t in TASKS},
        "peaks": {t: {p: cams[t][p].peak_slice for p in PLANES} for t in TASKS},
        "active": {t: {p: cams[t][p].raw_max > 0 for p in PLANES} for t in TASKS},
        "probs": {t: {"prob": report["tasks"][t]["prob"],
                      "call": report["tasks"][t].get("call"),
                      "threshold": report["tasks"][t].get("threshold"),
                      "planes": {p: report["tasks"][t]["planes"][p]["prob"] for p in PLANES}}
                  for t in TASKS},
        "labels": dict(labels) if labels is not None else None,
    }
    # "</" inside the JSON would end the script element early.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (_TEMPLATE.replace("__TITLE__", html.escape(f"MRNet exam {case_id}"))
            .replace("__DATA__", payload))


def exam_viewer(predictor: Any, case_id: str, volumes: Mapping[str, np.ndarray],
                report: Mapping[str, Any], task: str = "acl",
                labels: Mapping[str, int] | None = None) -> str:
    """CAMs of every model for one exam, rendered into the viewer page (see :func:`render_html`)."""
    return render_html(case_id, volumes, exam_cams(predictor, volumes), report, task, labels)


def write_pages(folder: str | Path, pages: Mapping[str, str]) -> None:
    """Replace ``folder`` with one ``{name}.html`` per page, all at once.

    The pages go to a temporary sibling that is renamed onto ``folder``, so an interrupted
    run leaves the previous viewers and no stale page of an exam no longer listed.
    """
    with atomic_dir(folder) as tmp:
        for name, text in pages.items():
            (tmp / f"{name}.html").write_text(text, encoding="utf-8")


_TEMPLATE = PAGE_HEAD + r"""  .controls { margin: 8px 0 12px; display: flex; gap: 24px; align-items: center; }
  table { border-collapse: collapse; margin-bottom: 12px; font-variant-numeric: tabular-nums; }
  th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #333; }
  th:first-child, td:first-child { text-align: left; }
  tr.selected { background: #2a3550; }
  .planes { display: flex; gap: 16px; flex-wrap: wrap; }
  .panel { background: #1b1b1b; padding: 10px; border-radius: 6px; }
  .panel h2 { font-size: 16px; margin: 0 0 6px; display: flex; justify-content: space-between; }
  canvas { display: block; background: #000; }
  input[type=range] { display: block; margin: 8px 0 0; }
  .track { position: relative; height: 9px; }
  .track span { position: absolute; top: 0; width: 0; height: 0; border-left: 5px solid transparent;
                border-right: 5px solid transparent; border-bottom: 8px solid #ffb000;
                transform: translateX(-5px); }
  .info { display: flex; justify-content: space-between; align-items: center; font-size: 14px; }
  .badge { color: #111; background: #ffb000; border-radius: 3px; padding: 0 5px; font-size: 12px; }
  .note { color: #999; font-size: 12px; }
  button { font-size: 12px; }
</style>
</head>
<body>
<h1 id="title"></h1>
<table id="probs"></table>
<div class="controls">
  <label>CAM of task <select id="task"></select></label>
  <label><input type="checkbox" id="overlay" checked> show CAM overlay</label>
  <span class="note">&#9650; / <span class="badge">peak</span>:
    slice with the highest activation</span>
</div>
<div class="planes" id="planes"></div>
<div id="store" hidden></div>
<pre id="selftest"></pre>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const errors = [];
window.addEventListener("error", e => errors.push(String(e.message)));
const state = {task: D.task, overlay: true, slice: {}};
const ui = {};
// The images sit in a hidden element of the document, so the window's load event waits for
// all of them: everything after it (drawing, the self-test) runs synchronously, which is what
// headless Chromium's --dump-dom and --screenshot see.
const store = document.getElementById("store");
const load = src => { const im = new Image(); im.src = src; store.appendChild(im); return im; };
const slices = {}, overlays = {};
for (const p of D.planes) slices[p] = D.slices[p].map(load);
for (const t of D.tasks) {
  overlays[t] = {};
  for (const p of D.planes) overlays[t][p] = D.overlays[t][p].map(load);
}
const fmt = x => x.toFixed(3);

function buildTable() {
  const tab = document.getElementById("probs");
  let head = "<tr><th>task</th><th>ensemble</th><th>call (threshold)</th>";
  for (const p of D.planes) head += "<th>" + p + "</th>";
  if (D.labels) head += "<th>label</th>";
  tab.innerHTML = head + "</tr>";
  for (const t of D.tasks) {
    const tr = document.createElement("tr");
    tr.id = "row-" + t;
    let cells = "<td>" + t + "</td><td><b>" + fmt(D.probs[t].prob) + "</b></td>";
    const th = D.probs[t].threshold;
    cells += "<td>" + (D.probs[t].call || "n/a") +
      (th === null || th === undefined ? "" : " (" + fmt(th) + ")") + "</td>";
    for (const p of D.planes) cells += "<td>" + fmt(D.probs[t].planes[p]) + "</td>";
    if (D.labels) cells += "<td>" + D.labels[t] + "</td>";
    tr.innerHTML = cells;
    tab.appendChild(tr);
  }
}

function buildPanels() {
  const root = document.getElementById("planes");
  for (const p of D.planes) {
    const [n, h, w] = D.shape[p];
    const k = Math.max(1, Math.round(256 / Math.max(h, w)));
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.innerHTML =
      '<h2><span>' + p + '</span><span class="prob"></span></h2>' +
      '<canvas width="' + w * k + '" height="' + h * k + '"></canvas>' +
      '<input type="range" min="0" max="' + (n - 1) + '" step="1" style="width:' + w * k + 'px">' +
      '<div class="track" style="width:' + w * k + 'px"><span></span></div>' +
      '<div class="info"><span class="pos"></span><span class="badge">peak</span>' +
      '<button type="button">go to peak</button></div><div class="note act"></div>';
    root.appendChild(panel);
    const u = {
      canvas: panel.querySelector("canvas"), slider: panel.querySelector("input"),
      marker: panel.querySelector(".track span"), pos: panel.querySelector(".pos"),
      badge: panel.querySelector(".badge"), prob: panel.querySelector(".prob"),
      act: panel.querySelector(".act"), button: panel.querySelector("button"), n: n,
    };
    u.canvas.id = "canvas-" + p;
    u.slider.id = "slider-" + p;
    u.slider.addEventListener("input", () => { state.slice[p] = Number(u.slider.value); draw(p); });
    u.button.addEventListener("click", () => setSlice(p, D.peaks[state.task][p]));
    ui[p] = u;
  }
}

function setSlice(p, k) {
  state.slice[p] = k;
  ui[p].slider.value = String(k);
  draw(p);
}

function draw(p) {
  const u = ui[p], k = state.slice[p], t = state.task;
  const ctx = u.canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.clearRect(0, 0, u.canvas.width, u.canvas.height);
  ctx.drawImage(slices[p][k], 0, 0, u.canvas.width, u.canvas.height);
  if (state.overlay) ctx.drawImage(overlays[t][p][k], 0, 0, u.canvas.width, u.canvas.height);
  const peak = D.peaks[t][p];
  u.pos.textContent = "slice " + (k + 1) + " / " + u.n;
  u.badge.style.visibility = k === peak ? "visible" : "hidden";
  u.marker.style.left = (u.n > 1 ? 100 * peak / (u.n - 1) : 0) + "%";
  u.prob.textContent = t + " " + fmt(D.probs[t].planes[p]);
  u.act.textContent = D.active[t][p] ? "" : "no positive activation for " + t + " in this plane";
}

function drawAll() {
  for (const t of D.tasks) {
    document.getElementById("row-" + t).className = t === state.task ? "selected" : "";
  }
  for (const p of D.planes) draw(p);
}

function pixels(p) {
  const c = ui[p].canvas;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let h = 0;
  for (let i = 0; i < d.length; i++) h = (Math.imul(h, 31) + d[i]) | 0;
  return h;
}

function selftest() {
  const r = {};
  const all = () => D.planes.map(pixels).join(",");
  r.starts_at_peak = D.planes.every(p => state.slice[p] === D.peaks[state.task][p]);
  r.peak_badge_shown = D.planes.every(p => ui[p].badge.style.visibility === "visible");
  const p = D.planes.find(q => ui[q].n > 1);
  const before = pixels(p), from = state.slice[p];
  ui[p].slider.value = String((from + 1) % ui[p].n);
  ui[p].slider.dispatchEvent(new Event("input", {bubbles: true}));
  r.slider = {plane: p, from: from, to: state.slice[p]};
  r.slider_changed_image = pixels(p) !== before;
  r.peak_badge_hidden_off_peak = ui[p].badge.style.visibility === "hidden";
  const box = document.getElementById("overlay");
  const on = all();
  box.click();
  r.overlay_off_changed_image = all() !== on;
  box.click();
  r.overlay_on_restored_image = all() === on;
  const sel = document.getElementById("task");
  sel.value = D.tasks.find(t => t !== state.task);
  sel.dispatchEvent(new Event("change", {bubbles: true}));
  r.task = state.task;
  r.task_changed_image = all() !== on;
  r.errors = errors;
  r.done = true;
  document.getElementById("selftest").textContent = JSON.stringify(r);
}

function init() {
  document.getElementById("title").textContent = "MRNet exam " + D.case_id;
  document.title = "MRNet exam " + D.case_id;
  buildTable();
  const sel = document.getElementById("task");
  for (const t of D.tasks) sel.add(new Option(t, t, t === D.task, t === D.task));
  sel.addEventListener("change", () => { state.task = sel.value; drawAll(); });
  const box = document.getElementById("overlay");
  box.addEventListener("change", () => { state.overlay = box.checked; drawAll(); });
  buildPanels();
  for (const p of D.planes) {
    state.slice[p] = D.peaks[state.task][p];
    ui[p].slider.value = String(state.slice[p]);
  }
}
init();
window.addEventListener("load", () => {
  drawAll();
  if (location.hash === "#selftest") selftest();
});
</script>
</body>
</html>
"""
