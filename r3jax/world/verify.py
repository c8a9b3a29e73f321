"""Caption -> facts -> score against the exact scene.

Parsing is per clause (a listing item, a relation clause, or a whole sentence
that is neither): a clause outside the grammar of `language` becomes one
Invalid fact, which is never true. So garbage lowers precision instead of
being ignored, and `verify` never raises.

Scores (facts are deduplicated by meaning first):
  precision     true stated facts / stated facts (0 when nothing is stated)
  recall        checklist items stated / checklist items (see `facts`)
  f1            harmonic mean of the two (0 when both are 0)
  hallucination 1 - precision
  v_strict      every stated fact is true and every checklist item is stated
                (so every object is covered with its attributes and
                multiplicity, and the required relations are present)
  v_frac        checklist satisfied as a fraction, where the checklist gets one
                more item "everything stated is true": (items stated +
                [precision == 1]) / (items + 1); equals 1 iff v_strict
  parsed        the whole text is in the grammar (no Invalid clause)
"""

from __future__ import annotations

import collections
import dataclasses

from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.facts import (Fact, Invalid, KindCount, Ref, Relation, Total,
                               checklist, fact_key, is_true)
from r3jax.world.language import LISTING_HEADS, REL_WORDS, plural
from r3jax.world.scene import Scene


@dataclasses.dataclass(frozen=True)
class CaptionScore:
  precision: float
  recall: float
  f1: float
  hallucination: float
  v_strict: bool
  v_frac: float
  parsed: bool


def _split(tokens: list[str], sep: str) -> list[list[str]]:
  parts = [[]]
  for t in tokens:
    if t == sep:
      parts.append([])
    else:
      parts[-1].append(t)
  return parts


def _number(word: str, cfg: WorldConfig) -> int | None:
  words = NUMBERS[1:cfg.numbers + 1]  # every count the vocabulary states
  return NUMBERS.index(word) if word in words else None


def _item(tokens: list[str], cfg: WorldConfig) -> Fact:
  if len(tokens) != 4 or tokens[1] not in cfg.sizes or (
      tokens[2] not in cfg.colors):
    return Invalid(" ".join(tokens))
  det, size, color, noun = tokens
  if det in ("a", "an", "one") and noun in cfg.shapes:
    return KindCount(size, color, noun, 1)
  n = _number(det, cfg)
  shape = next((s for s in cfg.shapes if plural(s) == noun), None)
  if n is not None and n >= 2 and shape is not None:
    return KindCount(size, color, shape, n)
  return Invalid(" ".join(tokens))


def _listing(tokens: list[str], cfg: WorldConfig) -> list[Fact]:
  facts: list[Fact] = []
  if len(tokens) >= 2 and tokens[1] in ("object", "objects"):
    n = _number(tokens[0], cfg)
    if n is None or (tokens[1] == "object") != (n == 1):
      return [Invalid(" ".join(tokens))]
    facts.append(Total(n))
    tokens = tokens[2:]
    if not tokens:
      return facts
    if tokens[0] != ":":
      return facts + [Invalid(" ".join(tokens))]
    tokens = tokens[1:]
  items = [it for part in _split(tokens, ",") for it in _split(part, "and")]
  # Mentions of one kind add up: "a red circle and a red circle" is two.
  counts: collections.Counter = collections.Counter()
  for it in items:
    fact = _item(it, cfg)
    if isinstance(fact, KindCount):
      counts[(fact.size, fact.color, fact.shape)] += fact.n
    else:
      facts.append(fact)
  return facts + [KindCount(*k, n) for k, n in counts.items()]


def parse_ref(tokens: list[str], cfg: WorldConfig) -> Ref | None:
  """The Ref of "the [SIZE] [COLOR] (SHAPE | object)", else None."""
  if not tokens or tokens[0] != "the":
    return None
  words = tokens[1:]
  size = words.pop(0) if words and words[0] in cfg.sizes else None
  color = words.pop(0) if words and words[0] in cfg.colors else None
  if len(words) != 1 or (words[0] not in cfg.shapes and words[0] != "object"):
    return None
  return Ref(size, color, None if words[0] == "object" else words[0])


def _predicate(tokens: list[str], subject: Ref | None, cfg: WorldConfig
               ) -> Relation | None:
  for words, (rel, swap) in REL_WORDS.items():
    if tuple(tokens[:len(words)]) == words:
      obj = parse_ref(tokens[len(words):], cfg)
      if subject is None or obj is None:
        return None
      a, b = (obj, subject) if swap else (subject, obj)
      return Relation(a, rel, b)
  return None


def _relations(tokens: list[str], cfg: WorldConfig) -> list[Fact]:
  """Clauses "REF is REL REF" joined by "and"; a clause that starts at REL
  shares the subject of the clause before it."""
  facts, subject = [], None
  for clause in _split(tokens, "and"):
    predicate = clause
    if clause[:1] == ["the"]:
      k = clause.index("is") if "is" in clause else len(clause)
      subject, predicate = parse_ref(clause[:k], cfg), clause[k + 1:]
    facts.append(_predicate(predicate, subject, cfg) or
                 Invalid(" ".join(clause)))
  return facts


def _sentence(tokens: list[str], cfg: WorldConfig) -> list[Fact]:
  for head in LISTING_HEADS:
    if tuple(tokens[:len(head)]) == head:
      return _listing(tokens[len(head):], cfg)
  if tokens[0] == "the":
    return _relations(tokens, cfg)
  return [Invalid(" ".join(tokens))]


def parse_clauses(text: str, cfg: WorldConfig) -> list[Fact]:
  """All facts stated, with an Invalid fact for each unparsable clause."""
  facts = []
  for sentence in _split(text.split(), "."):
    if sentence:
      facts += _sentence(sentence, cfg)
  return facts


def parse_caption(text: str, cfg: WorldConfig) -> list[Fact] | None:
  """The stated facts, or None unless the whole text is in the grammar."""
  facts = parse_clauses(text, cfg)
  if not facts or any(isinstance(f, Invalid) for f in facts):
    return None
  return facts


def verify(text: str, scene: Scene, cfg: WorldConfig) -> CaptionScore:
  facts = parse_clauses(text, cfg)
  stated = {fact_key(f, scene): f for f in facts}
  true_keys = {k for k, f in stated.items() if is_true(f, scene)}
  items = {fact_key(f, scene) for f in checklist(scene, cfg)}
  covered = len(items & true_keys)
  precision = len(true_keys) / len(stated) if stated else 0.0
  recall = covered / len(items)
  f1 = 2 * precision * recall / (precision + recall) if covered else 0.0
  all_true = bool(stated) and len(true_keys) == len(stated)
  return CaptionScore(
      precision=precision, recall=recall, f1=f1,
      hallucination=1.0 - precision,
      v_strict=all_true and covered == len(items),
      v_frac=(covered + all_true) / (len(items) + 1),
      parsed=bool(facts) and not any(isinstance(f, Invalid) for f in facts))
