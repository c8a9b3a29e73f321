"""Questions with exactly one correct single-word answer.

  existence  "is there a [SIZE] [COLOR] (SHAPE | object) ?"      yes / no
  count      "how many [SIZE] [COLOR] (SHAPEs | objects) are there ?"   NUM
  color      "what color is the REF ?"   (REF names one object without colour)
  shape      "what shape is the REF ?"
  size       "what size is the REF ?"
  relation   "is the REF REL the REF ?"   yes / no  (REL as in captions)
Attribute and relation questions only name objects a description singles out.
Existence and relation answers are drawn yes/no with equal odds first.
"""

from __future__ import annotations

import itertools

import numpy as np

from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.facts import Ref, holds, resolve, unique_refs
from r3jax.world.language import REL_WORDS, article, plural, ref_text
from r3jax.world.scene import Scene
from r3jax.world.verify import parse_ref

QTYPES = ("existence", "count", "color", "shape", "size", "relation")
_FIELDS = ("size", "color", "shape")
_SUBSETS = tuple(s for r in (1, 2, 3)
                 for s in itertools.combinations(_FIELDS, r))


def _without(attr: str) -> tuple[tuple[str, ...], ...]:
  return tuple(s for s in _SUBSETS if attr not in s)


def _matches(scene: Scene, ref: Ref) -> int:
  return sum(ref.matches(o) for o in scene.objects)


def _random_ref(rng: np.random.Generator, cfg: WorldConfig) -> Ref:
  subset = _SUBSETS[rng.integers(len(_SUBSETS))]
  values = {"size": cfg.sizes, "color": cfg.colors, "shape": cfg.shapes}
  return Ref(**{f: values[f][rng.integers(len(values[f]))] for f in subset})


def _object_ref(scene: Scene, rng: np.random.Generator) -> Ref:
  obj = scene.objects[rng.integers(len(scene.objects))]
  subset = _SUBSETS[rng.integers(len(_SUBSETS))]
  return Ref(**{f: getattr(obj, f) for f in subset})


def _phrase(ref: Ref, many: bool) -> str:
  words = [w for w in (ref.size, ref.color) if w]
  noun = ref.shape or "object"
  words.append(plural(noun) if many else noun)
  return " ".join(words)


def _existence(scene, rng, cfg):
  if rng.integers(2):
    ref = _object_ref(scene, rng)
  else:
    for _ in range(20):  # an absent description, nearly always found
      ref = _random_ref(rng, cfg)
      if not _matches(scene, ref):
        break
  phrase = _phrase(ref, many=False)
  answer = "yes" if _matches(scene, ref) else "no"
  return f"is there {article(phrase)} {phrase} ?", answer


def _count(scene, rng, cfg):
  ref = _object_ref(scene, rng) if rng.integers(2) else _random_ref(rng, cfg)
  return (f"how many {_phrase(ref, many=True)} are there ?",
          NUMBERS[_matches(scene, ref)])


def _attribute(attr: str):
  def ask(scene, rng, cfg):
    del cfg
    options = [(i, r) for i in range(len(scene.objects))
               for r in unique_refs(scene, i, _without(attr))]
    i, ref = options[rng.integers(len(options))]
    return (f"what {attr} is {ref_text(ref)} ?",
            getattr(scene.objects[i], attr))
  return ask


def _relation(scene, rng, cfg):
  del cfg
  i, j = rng.choice(scene.unique_objects, size=2, replace=False)
  words, (rel, swap) = list(REL_WORDS.items())[rng.integers(len(REL_WORDS))]

  def says(a: int, b: int) -> bool:  # "a <words> b"
    return holds(scene, b, rel, a) if swap else holds(scene, a, rel, b)

  if says(i, j) != bool(rng.integers(2)):
    i, j = j, i  # distinct rows and columns: swapping flips the answer
  ra, rb = (unique_refs(scene, k, _SUBSETS) for k in (i, j))
  ra, rb = ra[rng.integers(len(ra))], rb[rng.integers(len(rb))]
  question = f"is {ref_text(ra)} {' '.join(words)} {ref_text(rb)} ?"
  return question, "yes" if says(i, j) else "no"


_ASK = {"existence": _existence, "count": _count, "color": _attribute("color"),
        "shape": _attribute("shape"), "size": _attribute("size"),
        "relation": _relation}


def available_qtypes(scene: Scene) -> list[str]:
  n = len(scene.objects)
  ok = {"existence": True, "count": True,
        "relation": len(scene.unique_objects) >= 2}
  for attr in ("color", "shape", "size"):
    ok[attr] = any(unique_refs(scene, i, _without(attr)) for i in range(n))
  return [q for q in QTYPES if ok[q]]


def vqa(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
        n: int) -> list[tuple[str, str, str]]:
  """n (qtype, question, answer) triples cycling over a shuffled type order."""
  types = available_qtypes(scene)
  types = [types[k] for k in rng.permutation(len(types))]
  out, seen = [], set()
  for k in range(n):
    qtype = types[k % len(types)]
    for _ in range(5):  # a few retries to avoid repeating a question
      question, answer = _ASK[qtype](scene, rng, cfg)
      if question not in seen:
        break
    seen.add(question)
    out.append((qtype, question, answer))
  return out


_REL_HEADS = ("left", "right", "above", "below")


def relation_span(words) -> tuple[int, int] | None:
  """[start, end) of the first relation phrase (a key of REL_WORDS, e.g.
  "to the right of") in `words`, or None."""
  i = next((k for k, w in enumerate(words) if w in _REL_HEADS), None)
  if i is None:
    return None
  start = i - 2 if list(words[i - 2:i]) == ["to", "the"] else i
  end = i + 2 if list(words[i + 1:i + 2]) == ["of"] else i + 1
  return start, end


def _relation_parts(question: str, cfg: WorldConfig):
  """(A's words, B's words, A, relation, swapped, B) of "is A REL B ?"."""
  words = question.split()
  span = relation_span(words)
  if span is not None and words[:1] == ["is"] and words[-1:] == ["?"]:
    start, end = span
    rel, swap = REL_WORDS.get(tuple(words[start:end]), (None, None))
    a, b = parse_ref(words[1:start], cfg), parse_ref(words[end:-1], cfg)
    if rel is not None and a is not None and b is not None:
      return words[1:start], words[end:-1], a, rel, swap, b
  raise ValueError(f"not a relation question: {question!r}")


def relation_operands(question: str, cfg: WorldConfig
                      ) -> tuple[Ref, str, bool, Ref]:
  """(A, relation, swapped, B) of "is A REL B ?": relation "left" or
  "above", swapped when REL is "right of" or "below" (REL_WORDS)."""
  return _relation_parts(question, cfg)[2:]


def grid_index(obj, axis: str, cfg: WorldConfig) -> int:
  """The grid column ("left") or row ("above") an object's centre is in:
  scenes put objects in distinct rows and columns, and radius + jitter <
  0.5 keeps a centre inside its cell."""
  v = obj.x if axis == "left" else obj.y
  return min(int(v * cfg.grid), cfg.grid - 1)


def relation_trace(question: str, scene: Scene, cfg: WorldConfig,
                   restate: bool = False) -> str:
  """The two objects' grid indices on the question's axis, as number words
  from "zero" (the left column, the top row): "is the red circle left of
  the square ?" -> "zero two" when the circle is in the left column and
  the square in the right one; with `restate`, each index after its
  object's description: "the red circle zero the square two". The answer
  follows from the two indices and the relation words alone, so a model
  that writes them before its answer has read both positions first
  (config.data.relation_answers "trace" and "restate")."""
  a_words, b_words, a, rel, _, b = _relation_parts(question, cfg)
  idx = []
  for ref in (a, b):
    i = resolve(ref, scene)
    if i is None:
      raise ValueError(f"{question!r}: {ref} does not name one object of "
                       "the scene")
    idx.append(NUMBERS[grid_index(scene.objects[i], rel, cfg)])
  if restate:
    return " ".join([*a_words, idx[0], *b_words, idx[1]])
  return " ".join(idx)


def _where(obj, cfg: WorldConfig) -> list[str]:
  return [NUMBERS[grid_index(obj, "left", cfg)],
          NUMBERS[grid_index(obj, "above", cfg)]]


def position_questions(scene: Scene, cfg: WorldConfig
                       ) -> list[tuple[str, str]]:
  """For every object a description singles out, every such description
  as a position question and its grid column and row: ("the small red
  circle ?", "zero two"); config.data.position_questions trains them."""
  out = []
  for i, obj in enumerate(scene.objects):
    where = " ".join(_where(obj, cfg))
    out += [(f"{ref_text(ref)} ?", where)
            for ref in unique_refs(scene, i, _SUBSETS)]
  return out


def _listed(words: list[str], k: int, cfg: WorldConfig) -> Ref | None:
  """The object a caption's listing item ending at words[k] names, when it
  is one object ("a small red circle"), else None."""
  if k < 3 or words[k] not in cfg.shapes or words[k - 3] not in ("a", "an"):
    return None
  return Ref(words[k - 2], words[k - 1], words[k])


def caption_positions(caption: str, scene: Scene, cfg: WorldConfig) -> str:
  """The caption with each single object of its listing followed by its
  grid column and row, as a position question answers them: "there are two
  objects : a small red circle zero one and a large blue square two zero .
  the circle is left of the square" (config.data.caption_positions). A
  relation clause can then read both positions from words already written."""
  words, out = caption.split(), []
  for k, w in enumerate(words):
    out.append(w)
    ref = _listed(words, k, cfg)
    if ref is not None:
      i = resolve(ref, scene)
      if i is None:
        raise ValueError(f"{caption!r}: {ref} does not name one object of "
                         "the scene")
      out += _where(scene.objects[i], cfg)
  return " ".join(out)


def _rel_at(words: list[str], i: int) -> int:
  """The length of the relation phrase (a key of REL_WORDS) starting at
  words[i], 0 when none does."""
  return next((len(w) for w in REL_WORDS if tuple(words[i:i + len(w)]) == w),
              0)


def _predicates(words: list[str], cfg: WorldConfig):
  """(i, subject, object, relation, swapped) for each relation phrase of a
  caption, starting at words[i] (relation and swapped as in REL_WORDS): "the square is right of the circle and left of the
  triangle" has two, both with the subject "the square". A ref that does not
  parse is None; number words (a trace) may sit anywhere between the
  subject, "is" and the phrase."""
  refs = {"the", "object", *cfg.sizes, *cfg.colors, *cfg.shapes}
  subject = None
  for i, w in enumerate(words):
    if w == ".":
      subject = None
    elif w == "is":
      k = i
      while k > 0 and words[k - 1] in refs and words[k - 1] != "the":
        k -= 1
      subject = parse_ref(words[k - 1:i], cfg) if k else None
    n = _rel_at(words, i)
    if n:
      end = i + n
      while end < len(words) and words[end] in refs:
        end += 1
      rel, swap = REL_WORDS[tuple(words[i:i + n])]
      yield i, subject, parse_ref(words[i + n:end], cfg), rel, swap


def _trace(subject: Ref | None, obj: Ref | None, rel: str, scene: Scene,
           cfg: WorldConfig) -> list[str] | None:
  """The grid indices of a predicate's subject and object on its axis."""
  idx = [resolve(r, scene) if r is not None else None for r in (subject, obj)]
  if None in idx:
    return None
  return [NUMBERS[grid_index(scene.objects[i], rel, cfg)] for i in idx]


def caption_trace(caption: str, scene: Scene, cfg: WorldConfig) -> str:
  """The caption with the grid indices of each relation's subject and
  object on its axis (columns for left/right, rows for above/below) written
  just before the relation words: "the square is two zero right of the
  circle and two one left of the triangle" (config.data.caption_trace). The
  relation words then follow from two written indices, as a traced VQA
  answer does (relation_trace)."""
  words = caption.split()
  at = {}
  for i, subject, obj, rel, _ in _predicates(words, cfg):
    at[i] = _trace(subject, obj, rel, scene, cfg)
    if at[i] is None:
      raise ValueError(f"{caption!r}: the relation at word {i} does not name "
                       "two objects of the scene")
  return " ".join(x for i, w in enumerate(words) for x in [*at.get(i, []), w])


def strip_positions(caption: str, cfg: WorldConfig) -> str:
  """The caption without the grid indices caption_positions and
  caption_trace write: the number words that follow a shape noun or come
  just before relation words, where no caption of the grammar has one (and
  any a model writes there)."""
  nouns = {*cfg.shapes, *map(plural, cfg.shapes)}
  numbers = set(NUMBERS[:cfg.grid])
  words = caption.split()
  drop, after_noun = set(), False
  for i, w in enumerate(words):
    if after_noun and w in numbers:
      drop.add(i)
    else:
      after_noun = w in nouns
    if _rel_at(words, i):
      k = i
      while k > 0 and words[k - 1] in numbers:
        k -= 1
        drop.add(k)
  return " ".join(w for i, w in enumerate(words) if i not in drop)


def trace_right(caption: str, scene: Scene, cfg: WorldConfig
                ) -> tuple[int, int]:
  """(right, relations): of the caption's relation phrases, how many follow
  the grid indices of their subject and object (caption_trace); one whose
  objects are not both in the scene is counted and wrong."""
  words, right, n = caption.split(), 0, 0
  for i, subject, obj, rel, _ in _predicates(words, cfg):
    n += 1
    want = _trace(subject, obj, rel, scene, cfg)
    right += want is not None and words[max(i - 2, 0):i] == want
  return right, n


def positions_right(caption: str, scene: Scene, cfg: WorldConfig
                    ) -> tuple[int, int]:
  """(right, written): of the caption's single-object listing items ("a
  SIZE COLOUR SHAPE"), how many are followed by the column and row of the
  object they name; an item that names no single object of the scene is
  written and wrong."""
  words, right, written = caption.split(), 0, 0
  for k in range(len(words)):
    ref = _listed(words, k, cfg)
    if ref is None:
      continue
    written += 1
    i = resolve(ref, scene)
    right += i is not None and words[k + 1:k + 3] == _where(
        scene.objects[i], cfg)
  return right, written
