"""Host-made random-resized crops (sslx.data.crops) and the device prefetcher."""

import io
import math
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sslx import augment, data
from sslx.data import crops

RATIO = (3 / 4, 4 / 3)
SIMCLR = (crops.CropGroup(224, (0.08, 1.0), RATIO, 2),)
DINO = (crops.CropGroup(224, (0.4, 1.0), RATIO, 2), crops.CropGroup(96, (0.05, 0.4), RATIO, 10))


def jpeg(array: np.ndarray, quality: int = 95, fmt: str = "JPEG") -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt, quality=quality)
  return out.getvalue()


def edges_image(width: int = 400, height: int = 200) -> np.ndarray:
  """Red left tenth, blue right tenth, grey between."""
  img = np.full((height, width, 3), 128, np.uint8)
  img[:, : width // 10] = (255, 0, 0)
  img[:, -width // 10 :] = (0, 0, 255)
  return img


def torchvision_box(width, height, scale, rng, ratio=RATIO):
  """torchvision RandomResizedCrop.get_params, the reference the crops must follow."""
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.randint(0, width - w), rng.randint(0, height - h), w, h
  if width / height < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif width / height > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def test_crops_reach_both_edges_of_a_wide_image():
  maker = crops.ViewMaker((crops.CropGroup(64, (0.08, 1.0), RATIO, 2),), seed=0)
  data_ = jpeg(edges_image())
  red = blue = 0
  for pos in range(60):
    for v in maker(data_, pos).global_views.astype(int):
      red += bool(((v[..., 0] > 200) & (v[..., 2] < 60)).any())
      blue += bool(((v[..., 2] > 200) & (v[..., 0] < 60)).any())
  # Both edges appear in many views (a centre-square crop could show neither).
  assert red >= 10 and blue >= 10


def test_box_distribution_matches_torchvision():
  maker = crops.ViewMaker((crops.CropGroup(224, (0.08, 1.0), RATIO, 2),), seed=3)
  ours = np.array([b for pos in range(2500) for b in maker.boxes(500, 375, pos)])
  rng = random.Random(0)
  ref = np.array([torchvision_box(500, 375, (0.08, 1.0), rng) for _ in range(5000)])
  for boxes in (ours, ref):
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 500).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 375).all()
  frac = lambda b: b[:, 2] * b[:, 3] / (500 * 375)  # noqa: E731
  qs = np.linspace(0.05, 0.95, 19)
  # Area fractions: the same distribution (deciles within sampling noise of 5,000 draws).
  np.testing.assert_allclose(np.quantile(frac(ours), qs), np.quantile(frac(ref), qs), atol=0.03)
  assert 0.08 - 1e-3 <= frac(ours).min() and frac(ours).max() <= 1.0
  # Placement: the left edges spread over the whole width, as torchvision's do.
  centre = lambda b: (b[:, 0] + b[:, 2] / 2) / 500  # noqa: E731
  np.testing.assert_allclose(np.quantile(centre(ours), qs), np.quantile(centre(ref), qs), atol=0.03)
  assert (ours[:, 0] < 25).mean() > 0.05 and (ours[:, 0] + ours[:, 2] > 475).mean() > 0.05


def test_host_box_equals_device_box_for_the_same_uniforms():
  rng = np.random.default_rng(0)
  for width, height in ((500, 375), (64, 300), (300, 64), (33, 33)):
    for _ in range(20):
      u = rng.random(2 * crops.NUM_TRIES + 2).astype(np.float32)
      x0, y0, w, h = crops.sample_box(u, width, height, (0.08, 1.0), RATIO)
      dy0, dx0, dh, dw = augment._crop_box_from_uniforms(
        jnp.asarray(u), height, width, (0.08, 1.0), RATIO
      )
      assert (x0, y0, w, h) == (int(dx0), int(dy0), int(dw), int(dh))
      assert tuple(crops.sample_boxes(u[None], width, height, (0.08, 1.0), RATIO)[0]) == (
        x0,
        y0,
        w,
        h,
      )


def test_one_decode_per_image_for_multi_crop(monkeypatch):
  calls = []
  real_jpeg, real_pil = crops._decode_jpeg, crops._decode_pil
  monkeypatch.setattr(crops, "_decode_jpeg", lambda *a: calls.append("jpeg") or real_jpeg(*a))
  monkeypatch.setattr(crops, "_decode_pil", lambda *a: calls.append("pil") or real_pil(*a))
  maker = crops.ViewMaker(DINO, seed=0)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(4)]
  for i, img in enumerate(images):
    views = maker(jpeg(img), i)
    assert views.global_views.shape == (2, 224, 224, 3)
    assert views.local_views.shape == (10, 96, 96, 3)
  views = maker(jpeg(images[0], fmt="PNG"), 9)  # not a JPEG: PIL decodes it, once
  assert views.local_views.shape == (10, 96, 96, 3)
  assert calls == ["jpeg"] * 4 + ["pil"]


def test_large_photo_decodes_at_a_reduced_dct_scale_and_looks_right(monkeypatch):
  levels = []
  real = crops._decode_jpeg
  monkeypatch.setattr(
    crops, "_decode_jpeg", lambda d, lvl, w, h: levels.append(lvl) or real(d, lvl, w, h)
  )
  yy, xx = np.mgrid[0:1200, 0:1600]
  smooth = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], -1)
  smooth = smooth.astype(np.uint8)
  maker = crops.ViewMaker((crops.CropGroup(64, (0.5, 1.0), RATIO, 2),), seed=1)
  encoded = jpeg(smooth)
  for pos in range(5):
    views = maker(encoded, pos)
    for (x0, y0, w, h), v in zip(maker.boxes(1600, 1200, pos), views.global_views):
      ref = Image.fromarray(smooth).resize((64, 64), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
      assert np.abs(v.astype(int) - np.asarray(ref, int)).mean() < 3
  assert levels and min(levels) == 3  # crops of >= ~850 px for 64 px views: 1/8 scale


def test_views_are_a_function_of_seed_and_position():
  encoded = jpeg(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
  a = crops.ViewMaker(SIMCLR, seed=5)(encoded, 17)
  b = crops.ViewMaker(SIMCLR, seed=5)(encoded, 17)
  c = crops.ViewMaker(SIMCLR, seed=5)(encoded, 18)
  np.testing.assert_array_equal(a.global_views, b.global_views)
  assert not np.array_equal(a.global_views, c.global_views)


def write_folder(root, n=24, size=(60, 40), corrupt=True):
  rng = np.random.default_rng(0)
  for k in range(n):
    d = root / "train" / f"c{k % 3}"
    d.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    (d / f"{k:03d}.jpg").write_bytes(jpeg(img))
  if corrupt:
    (root / "train" / "c0" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return root


def test_loader_with_host_views_skips_a_corrupt_file_and_names_it(tmp_path, caplog):
  source = data.ImageFolderSource(write_folder(tmp_path), "train", 32)
  maker = crops.ViewMaker((crops.CropGroup(32, (0.2, 1.0), RATIO, 2),), seed=0)
  loader = data.make_train_loader(source, 8, seed=0, shuffle=False, view_maker=maker)
  batches = [next(loader) for _ in range(3)]
  assert batches[0]["image"].global_views.shape == (8, 2, 32, 32, 3)
  assert batches[0]["image"].local_views is None
  # Records in (class, path) order, the epoch cut to 24 (c0: 8 + bad.jpg, c1: 8, c2: 7 of 8);
  # the corrupt one's slot is taken by the next record (c1's first), nothing shifts.
  labels = np.concatenate([b["label"] for b in batches])
  assert np.bincount(labels).tolist() == [8, 9, 7]
  np.testing.assert_array_equal(labels[8:10], [1, 1])
  assert source.num_skipped == 1 and source.skipped_names[0].endswith("c0/bad.jpg")
  assert "bad.jpg" in caplog.text
  # The same crops again from the same stream positions (a resumed run's view).
  again = data.make_train_loader(source, 8, seed=0, shuffle=False, view_maker=maker)
  np.testing.assert_array_equal(next(again)["image"].global_views, batches[0]["image"].global_views)
  # Two worker processes make the same batches.
  workers = data.make_train_loader(
    source, 8, seed=0, shuffle=False, view_maker=maker, num_workers=2
  )
  for b in batches:
    w = next(workers)
    np.testing.assert_array_equal(w["image"].global_views, b["image"].global_views)
    np.testing.assert_array_equal(w["label"], b["label"])


def test_host_views_skip_the_device_crop_and_keep_the_rest():
  from sslx import multicrop

  mc = multicrop.MultiCrop.from_config(
    {"global_crop_size": 16, "num_local_crops": 3, "local_crop_size": 8}, num_global=2
  )
  rng = np.random.default_rng(0)
  views = multicrop.HostViews(
    rng.integers(0, 256, (4, 2, 16, 16, 3), dtype=np.uint8),
    rng.integers(0, 256, (4, 3, 8, 8, 3), dtype=np.uint8),
  )
  out = mc(jax.random.PRNGKey(0), views)
  assert out.global_crops.shape == (8, 16, 16, 3) and out.local_crops.shape == (12, 8, 8, 3)
  # Without colour, blur or solarize, a view is its host crop, flipped or not (row i·2 + v).
  plain = multicrop.MultiCrop.from_config(
    {
      "global_crop_size": 16,
      "brightness": 0.0,
      "contrast": 0.0,
      "saturation": 0.0,
      "hue": 0.0,
      "grayscale_prob": 0.0,
      "global_blur_prob": 0.0,
      "global_solarize_prob": 0.0,
    }
  )
  g = np.asarray(plain(jax.random.PRNGKey(1), multicrop.HostViews(views.global_views)).global_crops)
  for v in range(2):
    for i in range(4):
      src = views.global_views[i, v] / 255.0
      assert np.allclose(g[i * 2 + v], src, atol=1e-6) or np.allclose(
        g[i * 2 + v], src[:, ::-1], atol=1e-6
      )


class SlowLoader:
  """A loader whose batches take `delay` seconds of host time each."""

  def __init__(self, delay):
    self.delay, self.n = delay, 0

  def __next__(self):
    time.sleep(self.delay)
    self.n += 1
    return {"image": np.full((8, 4), self.n, np.float32)}

  def get_state(self):
    return {"n": self.n}

  def set_state(self, state):
    self.n = state["n"]


def test_prefetch_hides_a_slow_source_behind_the_step():
  step_s, load_s, steps = 0.06, 0.04, 12
  batches = data.DevicePrefetcher(SlowLoader(load_s), None, size=2, to_device=lambda b, s: b)
  waits, seen = [], []
  t0 = time.perf_counter()
  for k in range(steps):
    t = time.perf_counter()
    batch = next(batches)
    waits.append(time.perf_counter() - t)
    seen.append(int(batch["image"][0, 0]))
    time.sleep(step_s)  # the step (the device's time)
    assert batches.get_state() == {"n": k + 1}  # the state of batches taken, not prefetched
  total = time.perf_counter() - t0
  batches.close()
  assert seen == list(range(1, steps + 1))
  # After the first batch the loader's 40 ms are hidden behind the 60 ms step: the loop waits
  # next to nothing per step, and the run takes the steps' time, not steps + loading (the
  # bounds leave room for a loaded machine's scheduling).
  assert np.median(waits[1:]) < 0.25 * load_s, waits
  assert total < steps * step_s + 0.5 * steps * load_s, total


def test_prefetch_raises_a_loader_error_at_the_batch_it_hits():
  class Failing(SlowLoader):
    def __next__(self):
      if self.n == 3:
        raise RuntimeError("disk gone")
      return super().__next__()

  batches = data.DevicePrefetcher(Failing(0.0), None, to_device=lambda b, s: b)
  assert [int(next(batches)["image"][0, 0]) for _ in range(3)] == [1, 2, 3]
  with pytest.raises(RuntimeError, match="disk gone"):
    next(batches)
  batches.close()


def test_prefetch_set_state_before_start():
  loader = SlowLoader(0.0)
  batches = data.DevicePrefetcher(loader, None, to_device=lambda b, s: b)
  batches.set_state({"n": 5})
  assert int(next(batches)["image"][0, 0]) == 6
  with pytest.raises(RuntimeError, match="before the first batch"):
    batches.set_state({"n": 0})
  batches.close()


@pytest.mark.slow
def test_resume_with_host_crops_is_bit_exact(tmp_path, monkeypatch):
  from sslx import checkpointing, train
  from tests.helpers import crash_mid_run, tiny_simclr

  root = write_folder(tmp_path / "images", n=96, size=(56, 40), corrupt=False)
  config = tiny_simclr(
    steps=6,
    evals={},
    **{
      "dataset.name": "image_folder",
      "dataset.path": str(root),
      "dataset.host_crops": True,
      "augment.crop_size": 32,
    },
  )

  def final(workdir):
    mngr = checkpointing.manager(workdir, async_save=False)
    source = data.build_source(config.dataset, "train")
    sample = np.zeros((2, 32, 32, 3), np.uint8)
    setup = train.build(config, sample, len(source), source.num_classes)
    state, data_state = checkpointing.restore(
      mngr, mngr.latest_step(), train.create_state(setup, 0, sample)
    )
    return mngr.latest_step(), jax.device_get(state), data_state

  train.train_and_evaluate(config, str(tmp_path / "straight"))
  crash_mid_run(config, str(tmp_path / "resumed"), monkeypatch)
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, a, data_a = final(str(tmp_path / "straight"))
  step_b, b, data_b = final(str(tmp_path / "resumed"))
  assert step_a == step_b == 6 and data_a == data_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("recipe,views", [("simclr", "2x224"), ("dino", "2x224+10x96")])
def test_benchmark_times_the_host_pipeline_alone(tmp_path, recipe, views):
  import os

  from tests.helpers import REPO, run_benchmark

  root = write_folder(tmp_path / "images", n=40, size=(250, 190), corrupt=False)
  args = [
    f"--config=experiments/{recipe}.py:imagenet",
    "--config.dataset.name=image_folder",
    f"--config.dataset.path={root}",
    "--config.dataset.num_workers=0",
    "--input_pipeline",
    "--steps=0",
    "--input_batches=2",
    "--input_batch_size=8",
  ]
  peer = os.path.join(REPO, "..", "shared", "bench", "input_peer.py")
  if not os.path.exists(peer):
    peer = "/work/shared/bench/input_peer.py"
  if os.path.exists(peer):
    args += ["--input_peer", f"--input_peer_script={peer}"]
  result = run_benchmark(*args)
  assert result["input_images_per_sec"] > 0 and result["cpu_cores"] == os.cpu_count()
  assert result["input_views"] == views and result["input_images_timed"] == 16
  assert "images_per_sec" not in result  # no train step was built
  if "--input_peer" in args:
    assert result["peer_images_per_sec"] > 0 and result["ratio"] > 0
