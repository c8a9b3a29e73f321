"""Rasterises scenes with numpy masks; no anti-aliasing keeps colours exact."""

from __future__ import annotations

import functools

import numpy as np

from r3jax.world.config import BACKGROUND, PALETTE, WorldConfig
from r3jax.world.scene import Object, Scene


@functools.lru_cache(maxsize=8)
def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  c = (np.arange(image_size, dtype=np.float32) + 0.5)
  return c[None, :], c[:, None]  # x_1xW, y_Hx1


def object_mask(obj: Object, cfg: WorldConfig) -> np.ndarray:
  """Boolean [H, W] mask of the pixels the object covers."""
  x_1xW, y_Hx1 = _pixel_centres(cfg.image_size)
  r = cfg.radius_px(obj.size)
  dx = x_1xW - obj.x * cfg.image_size
  dy = y_Hx1 - obj.y * cfg.image_size
  if obj.shape == "circle":
    return dx * dx + dy * dy <= r * r
  if obj.shape == "square":
    # Side 1.6 r: a little smaller than the circle's box, similar area.
    return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
  if obj.shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= r
  if obj.shape == "triangle":
    # Apex up at -r, base at +0.75 r with half-width r; contains the centre.
    t = (dy + r) / (1.75 * r)
    return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
  raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, cfg: WorldConfig) -> np.ndarray:
  """uint8 [H, W, 3] image of the scene."""
  img_HxWx3 = np.empty((cfg.image_size, cfg.image_size, 3), np.uint8)
  img_HxWx3[:] = BACKGROUND
  for obj in scene.objects:
    img_HxWx3[object_mask(obj, cfg)] = PALETTE[obj.color]
  return img_HxWx3
