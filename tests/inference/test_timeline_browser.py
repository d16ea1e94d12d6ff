"""A real headless browser (Debian's chromium) opens the ``hms annotate`` HTML timeline and
draws its embedded plot: the six class colours fill the screenshot, and do not when the
``<img>`` is taken out of the page."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from hms_core.inference.timeline import CLASS_COLOURS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1200, 1400)  # wide and tall enough that the plot sits above the fold


def _screenshot(html_path, png_path, profile) -> np.ndarray:
    """The page as chromium draws it, ``(height, width, 3)`` floats in [0, 1]."""
    import matplotlib.image

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", f"--screenshot={png_path}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           html_path.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png_path.is_file(), done.stderr[-2000:]
    return matplotlib.image.imread(png_path)[..., :3]


def _colour_pixels(image: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(image - rgb).max(axis=-1) < 0.04).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run apt-installs it)")
def test_chromium_draws_the_embedded_timeline(canonical, tmp_path):
    page = canonical["paths"]["html"]
    shown = _screenshot(page, tmp_path / "page.png", tmp_path / "profile")
    assert shown.shape == (WINDOW[1], WINDOW[0], 3)
    blank_page = tmp_path / "no_image.html"
    text, n = re.subn(r"<img [^>]*>", "", page.read_text())
    assert n == 1
    blank_page.write_text(text)
    blank = _screenshot(blank_page, tmp_path / "no_image.png", tmp_path / "profile")
    # The tiny model is near uniform: every class is a band of the stacked plot. (Other's grey
    # also edges the page's anti-aliased text, so only the five colours are absent without the plot.)
    for name, colour in CLASS_COLOURS.items():
        assert _colour_pixels(shown, colour) > 5000, name
        assert name == "Other" or _colour_pixels(blank, colour) < 100, name
    saturated = lambda img: float(((img.max(axis=-1) - img.min(axis=-1)) > 0.2).mean())
    assert saturated(shown) > 0.1 > 0.001 > saturated(blank)
