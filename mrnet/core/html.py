"""Images for self-contained HTML pages: slices and CAM overlays as embedded PNG data URIs, so
a viewer page needs no server and nothing from the network."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

# The top of every viewer page, up to its own styles; the page replaces __TITLE__.
PAGE_HEAD = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 16px; background: #111; color: #eee; }
  h1 { font-size: 20px; margin: 0 0 8px; }
"""

# Slices larger than this are downscaled for the page (MRNet's are 256 px, so they stay).
MAX_SLICE_PX = 256
# CAMs are smooth (3x3 to 15x15 maps upsampled), so a small overlay loses nothing and the
# browser's smoothing scales it up.
MAX_OVERLAY_PX = 64
# Overlay opacity at the highest activation.
OVERLAY_ALPHA = 0.6


def png_data_uri(image: np.ndarray) -> str:
    """A PNG data URI of a uint8 (H, W) grey or (H, W, 4) RGBA image."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fit_size(shape: tuple[int, int], limit: int) -> tuple[int, int]:
    """(width, height) of ``shape`` (H, W) scaled down to fit ``limit``; never scaled up."""
    h, w = shape
    k = min(1.0, limit / max(h, w))
    return max(1, round(w * k)), max(1, round(h * k))


def slice_images(volume: np.ndarray, max_px: int = MAX_SLICE_PX) -> list[str]:
    """One PNG data URI per slice of a uint8 (S, H, W) series, at most ``max_px`` px."""
    size = fit_size(volume.shape[1:], max_px)
    out = []
    for s in volume:
        img = Image.fromarray(np.ascontiguousarray(s, dtype=np.uint8))
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        out.append(png_data_uri(np.asarray(img)))
    return out


def overlay_images(cam: np.ndarray, max_px: int = MAX_OVERLAY_PX) -> list[str]:
    """One RGBA PNG data URI per slice of a (S, H, W) CAM in [0, 1]: jet colours, alpha ~ CAM."""
    size = fit_size(cam.shape[1:], max_px)
    cmap = colormaps["jet"]
    out = []
    for s in cam:
        img = Image.fromarray(np.ascontiguousarray(s, dtype=np.float32))  # mode "F"
        if img.size != size:
            img = img.resize(size, Image.Resampling.BILINEAR)
        a = np.clip(np.asarray(img), 0.0, 1.0)
        rgba = cmap(a)
        rgba[..., 3] = OVERLAY_ALPHA * a
        out.append(png_data_uri(np.round(rgba * 255).astype(np.uint8)))
    return out
