"""World settings: vocabulary of attributes, layout grid and per-image counts.

Difficulty is set here: more objects, shapes, colours or sizes, a finer grid,
or the vertical axis in the relation checklist make the captions harder.
"""

from __future__ import annotations

import dataclasses

# Saturated, mutually distinct colours; the keys are the colour words.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (245, 220, 40),
    "purple": (160, 60, 220),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
}
BACKGROUND = (64, 64, 64)
SHAPES = ("circle", "square", "triangle", "diamond")
# Radius relative to the largest drawable one; "large" is twice "small".
SIZE_SCALE = {"small": 0.5, "medium": 0.75, "large": 1.0}
AXES = ("horizontal", "vertical")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
           "eight", "nine", "ten")
MIN_RADIUS_PX = 1.5


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """One world. `grid` defaults to max(3, max_objects).

  relation_axes: which spatial chains the caption checklist requires
  ("horizontal": left-to-right order; "vertical": top-to-bottom order).
  radius: a "large" object's radius as a fraction of a grid cell; jitter: the
  largest offset of an object's centre from its cell's centre, also in cells.
  radius + jitter < 0.5 keeps every shape inside its own cell.
  number_words: the vocabulary holds the number words "zero" up to this one
  (None: up to max_objects). A world with fewer objects that keeps a larger
  world's number words has that world's vocabulary, so a model trained there
  continues here (the easy world from the default world's parameters).
  The verifier reads every count the vocabulary states (a count above
  max_objects is a false fact, not an unparsed caption), and the
  consistency losses offer every such count as an answer.
  """
  image_size: int = 64
  min_objects: int = 1
  max_objects: int = 3
  shapes: tuple[str, ...] = ("circle", "square", "triangle")
  colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
  sizes: tuple[str, ...] = ("small", "large")
  grid: int | None = None
  n_captions: int = 5
  n_questions: int = 6
  n_ita: int = 4
  relation_axes: tuple[str, ...] = ("horizontal",)
  radius: float = 0.34
  jitter: float = 0.08
  number_words: int | None = None

  def __post_init__(self):
    for name in ("shapes", "colors", "sizes", "relation_axes"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.grid is None:
      object.__setattr__(self, "grid", max(3, self.max_objects))
    if self.number_words == self.max_objects:  # one world, one description
      object.__setattr__(self, "number_words", None)
    self._validate()

  def _validate(self):
    if not 1 <= self.min_objects <= self.max_objects:
      raise ValueError("need 1 <= min_objects <= max_objects, got "
                       f"min_objects={self.min_objects}, "
                       f"max_objects={self.max_objects}")
    if self.max_objects >= len(NUMBERS):
      raise ValueError(f"max_objects={self.max_objects} exceeds "
                       f"{len(NUMBERS) - 1} (no number words beyond that)")
    if not self.max_objects <= self.numbers < len(NUMBERS):
      raise ValueError(f"number_words={self.number_words} must be in "
                       f"[max_objects={self.max_objects}, {len(NUMBERS) - 1}]")
    if self.max_objects > self.grid:
      raise ValueError(f"max_objects={self.max_objects} > grid={self.grid}: "
                       "every object needs its own grid row and column")
    _check_words("shapes", self.shapes, SHAPES)
    _check_words("colors", self.colors, tuple(PALETTE))
    _check_words("sizes", self.sizes, tuple(SIZE_SCALE))
    _check_words("relation_axes", self.relation_axes, AXES, allow_empty=True)
    if len(self.shapes) * len(self.colors) * len(self.sizes) < 2:
      raise ValueError("shapes x colors x sizes must allow two kinds of "
                       "object, or no caption could be wrong")
    if list(self.sizes) != sorted(self.sizes, key=SIZE_SCALE.get):
      raise ValueError(f"sizes must go from smallest to largest, got "
                       f"{self.sizes}")
    if not (self.radius > 0 and self.jitter >= 0 and
            self.radius + self.jitter < 0.5):
      raise ValueError(f"need radius > 0, jitter >= 0 and radius + jitter < "
                       f"0.5 (cells), got radius={self.radius}, "
                       f"jitter={self.jitter}")
    radii = [self.radius_px(s) for s in self.sizes]
    if radii[0] < MIN_RADIUS_PX:
      raise ValueError(
          f"image_size={self.image_size} with grid={self.grid} draws "
          f"{self.sizes[0]!r} objects with radius {radii[0]:.2f}px < "
          f"{MIN_RADIUS_PX}px; use a larger image or a smaller grid")
    if any(b - a < 1.0 for a, b in zip(radii, radii[1:])):
      raise ValueError(f"image_size={self.image_size} is too small to draw "
                       f"sizes {self.sizes} distinguishably (radii {radii})")
    for name in ("n_captions", "n_questions", "n_ita"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

  @property
  def numbers(self) -> int:
    """The largest number word of the vocabulary."""
    return self.max_objects if self.number_words is None else self.number_words

  @property
  def cell_px(self) -> float:
    return self.image_size / self.grid

  def radius_px(self, size: str) -> float:
    return SIZE_SCALE[size] * self.radius * self.cell_px


def _check_words(name: str, words: tuple[str, ...], known: tuple[str, ...],
                 allow_empty: bool = False):
  if not words and not allow_empty:
    raise ValueError(f"{name} is empty")
  if len(set(words)) != len(words):
    raise ValueError(f"{name} has duplicates: {words}")
  unknown = [w for w in words if w not in known]
  if unknown:
    raise ValueError(f"unknown {name} {unknown}; known: {known}")
