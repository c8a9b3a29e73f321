"""Scenes: objects on a grid with distinct rows and columns.

Distinct rows and columns make every left/right/above/below relation between
two objects unambiguous; the jitter keeps positions from being a pure grid.
Positions are normalised image coordinates of the object centre in [0, 1].
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import types
from collections.abc import Mapping

import numpy as np

from r3jax.world.config import WorldConfig

Kind = tuple[str, str, str]  # (size, colour, shape)


@dataclasses.dataclass(frozen=True)
class Object:
  shape: str
  color: str
  size: str
  x: float
  y: float

  @property
  def kind(self) -> Kind:
    return (self.size, self.color, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Object, ...]

  # Cached: the language code asks these many times per scene.
  @functools.cached_property
  def kind_counts(self) -> Mapping[Kind, int]:
    """Multiplicity of each (size, colour, shape); 0 for absent kinds."""
    return types.MappingProxyType(
        collections.Counter(o.kind for o in self.objects))

  @functools.cached_property
  def unique_objects(self) -> tuple[int, ...]:
    """Indices of objects no other object shares all attributes with.

    Only these can be referred to unambiguously ("the red circle").
    """
    counts = self.kind_counts
    return tuple(i for i, o in enumerate(self.objects) if counts[o.kind] == 1)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  rows = rng.permutation(cfg.grid)[:n]
  cols = rng.permutation(cfg.grid)[:n]
  jitter = rng.uniform(-cfg.jitter, cfg.jitter, size=(n, 2))
  objects = []
  for i in range(n):
    objects.append(Object(
        shape=cfg.shapes[rng.integers(len(cfg.shapes))],
        color=cfg.colors[rng.integers(len(cfg.colors))],
        size=cfg.sizes[rng.integers(len(cfg.sizes))],
        x=_f32((cols[i] + 0.5 + jitter[i, 0]) / cfg.grid),
        y=_f32((rows[i] + 0.5 + jitter[i, 1]) / cfg.grid)))
  return Scene(tuple(objects))


def _f32(v: float) -> float:
  # Positions are stored as float32; rounding here makes arrays round-trip.
  return float(np.float32(v))


def scene_to_arrays(scene: Scene, cfg: WorldConfig) -> dict[str, np.ndarray]:
  """Fixed shapes padded to max_objects (ids -1, positions -1)."""
  n, m = len(scene.objects), cfg.max_objects
  if n > m:
    raise ValueError(f"scene has {n} objects > max_objects={m}")
  out = {k: np.full((m,), -1, np.int32)
         for k in ("shape_id", "color_id", "size_id")}
  out.update({k: np.full((m,), -1.0, np.float32) for k in ("x", "y")})
  for i, o in enumerate(scene.objects):
    out["shape_id"][i] = cfg.shapes.index(o.shape)
    out["color_id"][i] = cfg.colors.index(o.color)
    out["size_id"][i] = cfg.sizes.index(o.size)
    out["x"][i], out["y"][i] = o.x, o.y
  out["num_objects"] = np.asarray(n, np.int32)
  return out


def scene_from_arrays(arrays: dict[str, np.ndarray],
                      cfg: WorldConfig) -> Scene:
  n = int(arrays["num_objects"])
  return Scene(tuple(
      Object(shape=cfg.shapes[int(arrays["shape_id"][i])],
             color=cfg.colors[int(arrays["color_id"][i])],
             size=cfg.sizes[int(arrays["size_id"][i])],
             x=float(arrays["x"][i]), y=float(arrays["y"][i]))
      for i in range(n)))
