"""Captions: fact lists rendered with paraphrase templates.

Grammar (words separated by single spaces; ":", ",", ".", "?" are words):
  caption   := sentence ( "." sentence )*
  sentence  := listing | relations
  listing   := ("there is" | "there are" | "the image shows")
               [ NUM ("object" | "objects") [ ":" items ] | items ]
  items     := item ( "," item )* [ "and" item ]
  item      := ("a" | "an" | "one") SIZE COLOR SHAPE | NUM SIZE COLOR SHAPE"s"
  relations := clause ( "and" ( clause | REL ref ) )*
  clause    := ref "is" REL ref        (a bare "REL ref" shares its subject)
  ref       := "the" [SIZE] [COLOR] (SHAPE | "object")
  REL       := "left of" | "to the left of" | "right of" | "to the right of"
               | "above" | "below"
Separators in item lists may be "," or "and" in any mix. A reference caption
lists every kind with its multiplicity (the total count in about half of
them), then states the checklist relations, e.g.
  "there are three objects : a small red circle , a large blue square and a
   small green triangle . the square is right of the circle and left of the
   triangle"
"""

from __future__ import annotations

import collections
import functools

import numpy as np

from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.facts import (Fact, KindCount, Ref, Relation, Total, chain,
                               full_ref, unique_refs)
from r3jax.world.scene import Scene

# Attribute subsets used to name an object in a caption, shortest first.
CAPTION_REF_FIELDS = (("shape",), ("color", "shape"), ("size", "shape"),
                      ("size", "color", "shape"))
LISTING_HEADS = (("there", "is"), ("there", "are"), ("the", "image", "shows"))
REL_WORDS = {  # phrase -> (canonical relation, whether it swaps the operands)
    ("left", "of"): ("left", False),
    ("to", "the", "left", "of"): ("left", False),
    ("right", "of"): ("left", True),
    ("to", "the", "right", "of"): ("left", True),
    ("above",): ("above", False),
    ("below",): ("above", True),
}
GRAMMAR_WORDS = ("there", "is", "are", "the", "image", "shows", "object",
                 "objects", "a", "an", "one", "and", ":", ",", ".", "?", "of",
                 "to", "left", "right", "above", "below")
QUESTION_WORDS = ("how", "many", "what", "color", "shape", "size", "yes", "no")
EDIT_WORDS = ("replace", "with", "add", "remove", "no", "further", "edit",
              "needed")


def plural(shape: str) -> str:
  return shape + "s"


def article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def ref_text(ref: Ref) -> str:
  words = [w for w in (ref.size, ref.color) if w] + [ref.shape or "object"]
  return " ".join(["the"] + words)


def _item_text(fact: KindCount) -> str:
  noun = fact.shape if fact.n == 1 else plural(fact.shape)
  det = article(fact.size) if fact.n == 1 else NUMBERS[fact.n]
  return f"{det} {fact.size} {fact.color} {noun}"


def _join(parts: list[str]) -> str:
  if len(parts) == 1:
    return parts[0]
  return " , ".join(parts[:-1]) + " and " + parts[-1]


def _listing(total: Total | None, kinds: list[KindCount],
             rng: np.random.Generator) -> str:
  items = _join([_item_text(k) for k in kinds]) if kinds else ""
  if total is not None:
    noun = "object" if total.n == 1 else "objects"
    verb = "is" if total.n == 1 else "are"
    count = f"there {verb} {NUMBERS[total.n]} {noun}"
    return f"{count} : {items}" if items else count
  if rng.integers(2):
    return f"the image shows {items}"
  return ("there is " if kinds[0].n == 1 else "there are ") + items


def _predicate(fact: Relation, subject: Ref) -> str:
  swap = subject == fact.b
  words = next(w for w, (rel, sw) in REL_WORDS.items()
               if rel == fact.rel and sw == swap and len(w) <= 2)
  return f"{' '.join(words)} {ref_text(fact.a if swap else fact.b)}"


def _relation_sentences(rels: list[Relation], rng: np.random.Generator
                        ) -> list[str]:
  """One sentence per subject; captions use the short phrasings only.

  An object in two relations becomes their common subject ("the square is
  right of the circle and left of the triangle"), which keeps chains short.
  """
  uses = collections.Counter(r for f in rels for r in (f.a, f.b))
  predicates: dict[Ref, list[str]] = {}
  for f in rels:
    hubs = [r for r in (f.a, f.b) if uses[r] >= 2] or [f.a, f.b]
    subject = hubs[rng.integers(len(hubs))]
    predicates.setdefault(subject, []).append(_predicate(f, subject))
  return [f"{ref_text(s)} is " + " and ".join(p)
          for s, p in predicates.items()]


def describe(facts: list[Fact], rng: np.random.Generator) -> str:
  """Renders Total / KindCount / Relation facts (listing first) as text."""
  totals = [f for f in facts if isinstance(f, Total)]
  kinds = [f for f in facts if isinstance(f, KindCount)]
  rels = [f for f in facts if isinstance(f, Relation)]
  sentences = []
  if totals or kinds:
    sentences.append(_listing(totals[0] if totals else None, kinds, rng))
  if rels:
    parts = _relation_sentences(rels, rng)
    sentences += [" and ".join(parts)] if rng.integers(2) else parts
  return " . ".join(sentences)


def reference_facts(scene: Scene, rng: np.random.Generator,
                    cfg: WorldConfig) -> list[Fact]:
  """A complete, true fact list for the scene, in a random paraphrase order."""
  counts = scene.kind_counts
  kinds = [KindCount(*k, n) for k, n in counts.items()]
  kinds = [kinds[i] for i in rng.permutation(len(kinds))]
  facts: list[Fact] = [Total(len(scene.objects))] if rng.integers(2) else []
  # One name per object, so a caption calls it the same thing throughout.
  names = {full_ref(scene.objects[i]): _short_ref(scene, i, rng)
           for i in scene.unique_objects}
  rels = [Relation(names[f.a], f.rel, names[f.b]) for f in chain(scene, cfg)]
  rels = [rels[i] for i in rng.permutation(len(rels))]
  return facts + kinds + rels


@functools.lru_cache(maxsize=256)
def _shortest_refs(scene: Scene, i: int) -> tuple[Ref, ...]:
  refs = unique_refs(scene, i, CAPTION_REF_FIELDS)
  words = [len(ref_text(r).split()) for r in refs]
  return tuple(r for r, w in zip(refs, words) if w == min(words))


def _short_ref(scene: Scene, i: int, rng: np.random.Generator) -> Ref:
  refs = _shortest_refs(scene, i)
  return refs[rng.integers(len(refs))]


def captions(scene: Scene, rng: np.random.Generator, cfg: WorldConfig,
             n: int) -> list[str]:
  return [describe(reference_facts(scene, rng, cfg), rng) for _ in range(n)]


def vocabulary(cfg: WorldConfig) -> list[str]:
  """Every word captions, questions, answers and edit instructions use."""
  words = set(GRAMMAR_WORDS + QUESTION_WORDS + EDIT_WORDS)
  words.update(NUMBERS[:cfg.numbers + 1])
  words.update(cfg.colors + cfg.sizes + cfg.shapes)
  words.update(plural(s) for s in cfg.shapes)
  return sorted(words)
