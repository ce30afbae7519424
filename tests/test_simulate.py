"""The contrastive-learning simulation: its JAX dynamics and its page in a real browser."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from sslx import simulate
from tests.helpers import REPO


def test_clean_clusters_form_at_low_temperature_with_good_augmentation():
  cfg = simulate.SimConfig(temperature=0.1, strength=0.25)
  x, y = simulate.make_sources(cfg)
  before = simulate.separation_score(simulate.init_angles(cfg, len(y)), y)
  result = simulate.simulate(cfg, steps=600)
  assert before < 0.05  # random angles: no class structure (silhouette ≤ 0)
  assert result["separation"] > 0.4, result["separation"]
  assert result["losses"][-50:].mean() < result["losses"][:50].mean()


def test_very_weak_augmentation_learns_no_classes():
  result = simulate.simulate(simulate.SimConfig(temperature=0.1, strength=0.02), steps=600)
  assert result["separation"] < 0.1, result["separation"]


def groups_per_class(result) -> float:
  theta, y = result["theta"], result["labels"]
  return float(np.mean([simulate.count_clusters(theta[y == c]) for c in np.unique(y)]))


def test_temperature_extremes_fragment_or_blend():
  """The seed's picture: τ ≈ 0.1-0.2 gives clean class clusters; a very low τ splits each
  class into fragments (measured 5.5 groups of points per class at τ=0.02 against ~2 at 0.15),
  a high τ blends the classes (no separation, each class spread round the circle)."""
  runs = {
    t: simulate.simulate(simulate.SimConfig(temperature=t, strength=0.25), steps=600)
    for t in (0.02, 0.15, 1.0)
  }
  assert runs[0.15]["separation"] > 0.4
  assert runs[0.02]["separation"] < 0.1 and runs[1.0]["separation"] < 0.1
  assert groups_per_class(runs[0.02]) > 2 * groups_per_class(runs[0.15])
  assert groups_per_class(runs[1.0]) > 2 * groups_per_class(runs[0.15])


def test_separation_score_extremes():
  y = np.repeat(np.arange(4), 10)
  tight = np.repeat(np.arange(4) * np.pi / 2, 10)
  assert simulate.separation_score(tight, y) == pytest.approx(1.0)
  spread = np.random.default_rng(0).uniform(0, 2 * np.pi, 40)
  assert abs(simulate.separation_score(spread, y)) < 0.2
  assert simulate.count_clusters(tight) == 4


def test_png_and_gif(tmp_path):
  pytest.importorskip("matplotlib")
  result = simulate.simulate(simulate.SimConfig(), steps=20, record_every=10)
  assert os.path.getsize(simulate.save_png(result, str(tmp_path / "s.png"))) > 1000
  assert os.path.getsize(simulate.save_gif(result, str(tmp_path / "s.gif"))) > 1000


def _chromium():
  for name in ("chromium", "chromium-browser"):
    if shutil.which(name):
      return shutil.which(name)
  return None


def test_page_in_headless_chromium(tmp_path):
  browser = _chromium()
  if browser is None or shutil.which("chromedriver") is None:
    pytest.skip("chromium/chromedriver not installed: apt-get install -y chromium chromium-driver")
  webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium not installed: pip install selenium"
  )
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys

  page = tmp_path / "sim.html"
  out = subprocess.run(
    [sys.executable, "-m", "sslx", "simulate", f"--out={page}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  html = page.read_text()
  assert "http://" not in html and "https://" not in html  # nothing fetched from a network

  opts = webdriver.ChromeOptions()
  opts.binary_location = browser
  for flag in (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--user-data-dir={tmp_path / 'profile'}",
    "--window-size=1000,1000",
  ):
    opts.add_argument(flag)
  from selenium.webdriver.chrome.service import Service

  driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
  try:
    driver.get(page.as_uri())
    text = lambda i: driver.find_element(By.ID, i).text  # noqa: E731
    assert text("tau-value") == "0.15" and text("step-count") == "0"
    for slider, value in (
      ("tau", "tau-value"),
      ("strength", "strength-value"),
      ("batch", "batch-value"),
    ):
      before = text(value)
      driver.find_element(By.ID, slider).send_keys(Keys.ARROW_RIGHT * 3)
      assert text(value) != before, slider
    driver.find_element(By.ID, "step").click()
    assert text("step-count") == "1" and text("loss-value") != "-"
    driver.find_element(By.ID, "play").click()
    deadline = time.time() + 20
    while int(text("step-count")) < 30 and time.time() < deadline:
      time.sleep(0.2)
    driver.find_element(By.ID, "play").click()
    assert int(text("step-count")) >= 30
    assert float(text("separation-value")) == float(text("separation-value"))  # a number
    shot = tmp_path / "page.png"
    driver.save_screenshot(str(shot))
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    if os.environ.get("SSLX_KEEP_SCREENSHOT"):
      shutil.copy(shot, os.environ["SSLX_KEEP_SCREENSHOT"])
  finally:
    driver.quit()
