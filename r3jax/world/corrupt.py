"""Captions with exactly one thing wrong: negatives for ITA and R3 data.

Each corruption describes a counterfactual scene that differs from the real one
by a single edit, with the usual templates, so the caption stays internally
consistent (its total, referents and relations agree with the edit) and only
the image can tell it is wrong:
  color/shape/size  one kind (all its copies) takes a value that makes a kind
                    the scene does not have; its KindCount is false.
  count             one kind gains a copy or loses one; its KindCount is false.
  missing           one kind (all its copies) is left out: recall < 1.
  extra             one object of a kind the scene lacks is added: false fact.
  relation          one checklist relation is stated reversed: false fact.
Edits that add an object need a scene below max_objects, so a negative never
names more objects than an image can hold (that would give ITA away).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from r3jax.world.config import WorldConfig
from r3jax.world.facts import Relation, chain
from r3jax.world.language import describe, reference_facts
from r3jax.world.scene import Object, Scene

CORRUPTIONS = ("color", "count", "shape", "size", "relation", "missing",
               "extra")
_ATTR_VALUES = {"color": "colors", "shape": "shapes", "size": "sizes"}


def _attribute_edits(scene: Scene, cfg: WorldConfig, attr: str
                 ) -> list[tuple[tuple, str]]:
  """(kind, new value) pairs whose result is a kind absent from the scene."""
  kinds = scene.kind_counts
  pos = ("size", "color", "shape").index(attr)
  out = []
  for kind in sorted(kinds):
    for v in getattr(cfg, _ATTR_VALUES[attr]):
      new = kind[:pos] + (v,) + kind[pos + 1:]
      if new not in kinds:
        out.append((kind, v))
  return out


def _new_kinds(scene: Scene, cfg: WorldConfig) -> list[tuple[str, str, str]]:
  kinds = scene.kind_counts
  return [(s, c, sh) for s in cfg.sizes for c in cfg.colors for sh in cfg.shapes
          if (s, c, sh) not in kinds]


def available_corruptions(scene: Scene, cfg: WorldConfig) -> list[str]:
  room = len(scene.objects) < cfg.max_objects
  counts = scene.kind_counts
  ok = {"count": room or max(counts.values()) >= 2,
        "missing": len(counts) >= 2,
        "extra": room and bool(_new_kinds(scene, cfg)),
        "relation": bool(chain(scene, cfg))}
  for attr in _ATTR_VALUES:
    ok[attr] = bool(_attribute_edits(scene, cfg, attr))
  return [k for k in CORRUPTIONS if ok[k]]


def _added(kind: tuple[str, str, str], rng: np.random.Generator) -> Object:
  # Only the order of positions matters for what a caption can say.
  x, y = rng.uniform(0.0, 1.0, size=2)
  return Object(shape=kind[2], color=kind[1], size=kind[0], x=float(x),
                y=float(y))


def counterfactual(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
                   kind: str) -> Scene:
  """The scene after one edit of the given kind (not "relation")."""
  objs = list(scene.objects)
  counts = scene.kind_counts
  if kind in _ATTR_VALUES:
    options = _attribute_edits(scene, cfg, kind)
    old, value = options[rng.integers(len(options))]
    objs = [dataclasses.replace(o, **{kind: value}) if o.kind == old else o
            for o in objs]
  elif kind == "count":
    room = len(objs) < cfg.max_objects
    options = [(k, +1) for k in sorted(counts) if room]
    options += [(k, -1) for k in sorted(counts) if counts[k] >= 2]
    target, delta = options[rng.integers(len(options))]
    if delta > 0:
      objs.append(_added(target, rng))
    else:
      members = [i for i, o in enumerate(objs) if o.kind == target]
      objs.pop(members[rng.integers(len(members))])
  elif kind == "missing":
    gone = sorted(counts)[rng.integers(len(counts))]
    objs = [o for o in objs if o.kind != gone]
  elif kind == "extra":
    options = _new_kinds(scene, cfg)
    objs.append(_added(options[rng.integers(len(options))], rng))
  else:
    raise ValueError(f"no counterfactual scene for corruption {kind!r}")
  return Scene(tuple(objs))


def corrupt(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
            kind: str) -> str:
  """A caption of the scene with one fact changed; see the module docstring."""
  if kind not in available_corruptions(scene, cfg):
    raise ValueError(f"corruption {kind!r} is not possible for this scene; "
                     f"possible: {available_corruptions(scene, cfg)}")
  if kind != "relation":
    cf = counterfactual(scene, rng, cfg, kind)
    return describe(reference_facts(cf, rng, cfg), rng)
  facts = reference_facts(scene, rng, cfg)
  rels = [i for i, f in enumerate(facts) if isinstance(f, Relation)]
  i = rels[rng.integers(len(rels))]
  facts[i] = Relation(facts[i].b, facts[i].rel, facts[i].a)
  return describe(facts, rng)
