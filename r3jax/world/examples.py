"""One example (image, scene arrays, captions, VQA, ITA) from (seed, index).

Every example is a pure function of (cfg, seed, index), so any one can be
regenerated on its own, e.g. by an evaluator checking a stored record.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from r3jax.world.config import WorldConfig
from r3jax.world.corrupt import available_corruptions, corrupt
from r3jax.world.language import captions, describe, reference_facts
from r3jax.world.render import render
from r3jax.world.scene import Scene, sample_scene, scene_to_arrays
from r3jax.world.vqa import vqa


def ita(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
        n: int) -> list[tuple[str, str]]:
  """n (caption, "yes" | "no") pairs: half match, half have one fact wrong."""
  labels = ["yes"] * (n // 2) + ["no"] * (n // 2)
  if n % 2:
    labels.append(("yes", "no")[rng.integers(2)])
  labels = [labels[i] for i in rng.permutation(n)]
  kinds = available_corruptions(scene, cfg)
  out = []
  for label in labels:
    if label == "yes":
      text = describe(reference_facts(scene, rng, cfg), rng)
    else:
      text = corrupt(scene, rng, cfg, kinds[rng.integers(len(kinds))])
    out.append((text, label))
  return out


def generate_example(cfg: WorldConfig, seed: int, index: int
                     ) -> dict[str, Any]:
  """Keys: image, scene (arrays), captions, vqa, ita."""
  # Separate streams: changing n_questions leaves the captions unchanged.
  scene_rng, cap_rng, vqa_rng, ita_rng = np.random.default_rng(
      [seed, index]).spawn(4)
  scene = sample_scene(scene_rng, cfg)
  return {
      "image": render(scene, cfg),
      "scene": scene_to_arrays(scene, cfg),
      "captions": captions(scene, cap_rng, cfg, cfg.n_captions),
      "vqa": vqa(scene, vqa_rng, cfg, cfg.n_questions),
      "ita": ita(scene, ita_rng, cfg, cfg.n_ita),
  }
