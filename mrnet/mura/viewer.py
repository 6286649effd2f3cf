"""A self-contained HTML viewer of one MURA study: its views with class activation maps.

In the style of :mod:`mrnet.inference.viewer`: one file that needs no server and nothing from the network
(views and CAM overlays are embedded PNG data URIs, script and style inline). It shows the
study's probability with its call and threshold, what the model was trained on, and every view
side by side with its own probability and a CAM overlay that a checkbox switches on and off.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mrnet.core.html import MAX_SLICE_PX, PAGE_HEAD, overlay_images, slice_images
from mrnet.mura.model import MuraNet, imagenet_normalize
from mrnet.mura.prepare import resize_view


@torch.inference_mode()
def view_cams(model: MuraNet, views: Sequence[np.ndarray], image_size: int,
              device: torch.device | str = "cpu") -> tuple[list[np.ndarray], float]:
    """Class activation maps of each view of one study, each at its view's own size.

    The maps are ReLU'd and scaled by the highest activation over the study's views (so the
    views stay comparable), as MRNet's viewer does across slices.

    Returns:
        (maps in [0, 1], one (H, W) float32 per view; highest raw activation, <= 0 when none).
    """
    model.eval()
    device = torch.device(device)
    small = torch.from_numpy(np.stack([resize_view(v, image_size) for v in views])).to(device)
    raw = model.cam(imagenet_normalize(small)).float()
    top = float(raw.max())
    cam = raw.clamp_min(0) / top if top > 0 else torch.zeros_like(raw)
    out = []
    for i, v in enumerate(views):
        up = F.interpolate(cam[i][None, None], size=v.shape, mode="bilinear", align_corners=False)
        out.append(up[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32))
    return out, top


def render_study_html(report: Mapping[str, Any], views: Sequence[np.ndarray],
                      cams: Sequence[np.ndarray], label: int | None = None) -> str:
    """The viewer page of one study.

    Args:
        report: :func:`mrnet.mura.predict.study_report` of the study.
        views: uint8 grey (H, W) per view, at their own sizes.
        cams: (H, W) maps in [0, 1] shaped like the views.
        label: the reference label, when known, shown beside the call.
    """
    if len(views) != len(cams) or len(views) != len(report["views"]):
        raise ValueError(f"{len(views)} views, {len(cams)} CAMs and {len(report['views'])} "
                         "reported views must match")
    for i, (v, c) in enumerate(zip(views, cams)):
        if v.shape != c.shape:
            raise ValueError(f"view {i}: CAM of shape {c.shape} for a view of shape {v.shape}")
    data = {
        "study": report["study"], "prob": report["prob"], "call": report["call"],
        "threshold": report["threshold"], "label": label, "model": report["model"],
        "views": [{"name": str(r["file"]).replace("\\", "/").rsplit("/", 1)[-1],
                   "prob": r["prob"], "shape": list(v.shape),
                   "image": slice_images(v[None], MAX_SLICE_PX)[0],
                   "overlay": overlay_images(c[None])[0]}
                  for r, v, c in zip(report["views"], views, cams)],
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (_TEMPLATE.replace("__TITLE__", html.escape(f"MURA study {report['study']}"))
            .replace("__DATA__", payload))


def study_viewer(model: MuraNet, report: Mapping[str, Any], views: Sequence[np.ndarray],
                 image_size: int, device: torch.device | str = "cpu",
                 label: int | None = None) -> str:
    """CAMs of every view of one study, rendered into the viewer page."""
    cams, _ = view_cams(model, views, image_size, device)
    return render_study_html(report, views, cams, label)


_TEMPLATE = PAGE_HEAD + r"""  .summary { font-size: 15px; margin-bottom: 6px; }
  .abnormal { color: #ff7b5c; font-weight: bold; }
  .normal { color: #7bdc7b; font-weight: bold; }
  .note { color: #999; font-size: 12px; }
  .controls { margin: 8px 0 12px; }
  .views { display: flex; gap: 16px; flex-wrap: wrap; }
  .panel { background: #1b1b1b; padding: 10px; border-radius: 6px; }
  .panel h2 { font-size: 15px; margin: 0 0 6px; display: flex; justify-content: space-between;
              gap: 16px; }
  canvas { display: block; background: #000; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div class="summary" id="summary"></div>
<div class="note" id="model"></div>
<div class="controls"><label><input type="checkbox" id="overlay" checked> show class activation
  maps</label> <span class="note">(scaled to the highest activation over the study's views)</span></div>
<div class="views" id="views"></div>
<div id="store" hidden></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const store = document.getElementById("store");
const load = src => { const im = new Image(); im.src = src; store.appendChild(im); return im; };
const images = D.views.map(v => load(v.image)), overlays = D.views.map(v => load(v.overlay));
const canvases = [];
let overlay = true;
function draw(i) {
  const c = canvases[i], ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(images[i], 0, 0, c.width, c.height);
  if (overlay) ctx.drawImage(overlays[i], 0, 0, c.width, c.height);
}
function init() {
  document.getElementById("title").textContent = "MURA study " + D.study;
  const s = document.getElementById("summary");
  s.innerHTML = "P(abnormal) <b>" + D.prob.toFixed(3) + "</b> (mean over " + D.views.length +
    " views) &rarr; <span class='" + D.call + "'>" + D.call + "</span> at threshold " +
    D.threshold + (D.label === null ? "" : "; reference label: " +
    (D.label ? "abnormal" : "normal"));
  const m = D.model;
  document.getElementById("model").textContent = "model: " + m.backbone + " at " +
    m.image_size + " px, epoch " + m.epoch + ", trained on " + m.train_studies +
    " studies of " + m.data_root;
  const root = document.getElementById("views");
  D.views.forEach((v, i) => {
    const [h, w] = v.shape, k = Math.min(320 / Math.max(h, w), 4);
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.innerHTML = "<h2><span>" + v.name + "</span><span>" + v.prob.toFixed(3) +
      "</span></h2><canvas width='" + Math.round(w * k) + "' height='" + Math.round(h * k) +
      "'></canvas>";
    root.appendChild(panel);
    canvases.push(panel.querySelector("canvas"));
    draw(i);
  });
  document.getElementById("overlay").addEventListener("change", e => {
    overlay = e.target.checked; D.views.forEach((_, i) => draw(i));
  });
}
window.addEventListener("load", init);
</script>
</body>
</html>
"""
