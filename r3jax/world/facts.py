"""Facts a caption can state, their truth in a scene, and the scene checklist.

Facts:
  Total(n)                  "there are n objects": the scene has n objects.
  KindCount(s, c, sh, n)    "two small red circles": exactly n objects have
                            size s, colour c and shape sh.
  Relation(a, rel, b)       "the red circle is left of the square": the
                            referents a and b each match exactly one object,
                            distinct ones, and that relation holds. rel is
                            canonical: "left" (x_a < x_b) or "above"
                            (y_a < y_b); "right of"/"below" swap a and b.
  Invalid(text)             a clause outside the grammar; never true.

The checklist of a scene (what a complete caption must state):
  * one KindCount per distinct (size, colour, shape) with its multiplicity;
  * for each axis in cfg.relation_axes, the chain of adjacent relations among
    the objects whose kind is unique in the scene (only these can be named
    unambiguously): sorted left to right, "o1 left of o2", "o2 left of o3" ...;
    sorted top to bottom for "above".
  The total count is implied by the KindCounts and is not a checklist item,
  but a stated total is a fact like any other and must be true.
"""

from __future__ import annotations

import dataclasses

from r3jax.world.config import WorldConfig
from r3jax.world.scene import Object, Scene

@dataclasses.dataclass(frozen=True)
class Ref:
  """A definite description: "the [size] [colour] (shape | object)"."""
  size: str | None = None
  color: str | None = None
  shape: str | None = None

  def matches(self, obj: Object) -> bool:
    return ((self.size is None or self.size == obj.size) and
            (self.color is None or self.color == obj.color) and
            (self.shape is None or self.shape == obj.shape))


@dataclasses.dataclass(frozen=True)
class Total:
  n: int


@dataclasses.dataclass(frozen=True)
class KindCount:
  size: str
  color: str
  shape: str
  n: int


@dataclasses.dataclass(frozen=True)
class Relation:
  a: Ref
  rel: str
  b: Ref


@dataclasses.dataclass(frozen=True)
class Invalid:
  text: str


Fact = Total | KindCount | Relation | Invalid


def resolve(ref: Ref, scene: Scene) -> int | None:
  """Index of the only object the description matches, else None."""
  hits = [i for i, o in enumerate(scene.objects) if ref.matches(o)]
  return hits[0] if len(hits) == 1 else None


def holds(scene: Scene, i: int, rel: str, j: int) -> bool:
  a, b = scene.objects[i], scene.objects[j]
  return a.x < b.x if rel == "left" else a.y < b.y


def is_true(fact: Fact, scene: Scene) -> bool:
  if isinstance(fact, Total):
    return fact.n == len(scene.objects)
  if isinstance(fact, KindCount):
    kind = (fact.size, fact.color, fact.shape)
    return scene.kind_counts[kind] == fact.n
  if isinstance(fact, Relation):
    i, j = resolve(fact.a, scene), resolve(fact.b, scene)
    return i is not None and j is not None and i != j and holds(
        scene, i, fact.rel, j)
  return False


def fact_key(fact: Fact, scene: Scene) -> object:
  """Identity of a fact's meaning: relations by the objects they resolve to."""
  if isinstance(fact, Relation):
    i, j = resolve(fact.a, scene), resolve(fact.b, scene)
    if i is not None and j is not None:
      return ("rel", i, fact.rel, j)
  return fact


def full_ref(obj: Object) -> Ref:
  return Ref(obj.size, obj.color, obj.shape)


def chain(scene: Scene, cfg: WorldConfig) -> list[Relation]:
  """Adjacent relations among uniquely nameable objects, per checklist axis."""
  unique = scene.unique_objects
  out = []
  for axis in cfg.relation_axes:
    rel, coord = ("left", "x") if axis == "horizontal" else ("above", "y")
    order = sorted(unique, key=lambda i: getattr(scene.objects[i], coord))
    refs = [full_ref(scene.objects[i]) for i in order]
    out += [Relation(a, rel, b) for a, b in zip(refs, refs[1:])]
  return out


def checklist(scene: Scene, cfg: WorldConfig) -> list[Fact]:
  counts = sorted(scene.kind_counts.items())
  return [KindCount(*kind, n) for kind, n in counts] + chain(scene, cfg)


def unique_refs(scene: Scene, i: int, fields: tuple[tuple[str, ...], ...]
                ) -> list[Ref]:
  """Descriptions of object i (using each attribute subset) naming only it."""
  obj = scene.objects[i]
  refs = [Ref(**{f: getattr(obj, f) for f in subset}) for subset in fields]
  return [r for r in refs if resolve(r, scene) == i]
