"""Edit instructions: what is wrong with a caption, as one instruction, and
the caption after that one edit (the targets of R3's reflect and refine).

A caption is read into its surface structure (sentences of listing items or
relation clauses, in order, unparsable parts kept as text), so that an edit
changes one part and leaves the rest of the words as they were. `diagnose`
names the first problem in a fixed priority order, `apply` performs it:

  1. a clause outside the grammar           remove <text>
  2. a false kind count ("two red           replace <item> with <item>: the
     circles"; the mentions of one          true count of that kind (its other
     kind in a listing add up, as           mentions in the listing go with
     the verifier reads them)               it), else the closest kind the
                                            caption does not mention (fewest
                                            attributes changed), else remove
                                            <item>; remove <item> instead when
                                            another mention of its kind in the
                                            listing states the true count
  3. a false total ("three objects")        replace <n objects> with <m objects>
  4. a false relation                       replace <clause> with the reversed
     clause when both sides name one object each, else remove <clause>
  5. a kind the caption leaves out          add <item>
  6. a checklist relation left out          add <clause>
  otherwise                                 no further edit needed

A total that agreed with the items before an item edit is updated with them,
so a caption that is consistent apart from one wrong fact takes one edit.
Instruction grammar (`instruction` / `parse_instruction`):
  "replace" PHRASE "with" PHRASE | "add" PHRASE | "remove" PHRASE | STOP
"""

from __future__ import annotations

import dataclasses

from r3jax.world.config import NUMBERS, WorldConfig
from r3jax.world.facts import (Invalid, KindCount, Ref, Relation, chain,
                               fact_key, is_true, resolve)
from r3jax.world.language import (LISTING_HEADS, REL_WORDS, _item_text, _join,
                                  _shortest_refs, ref_text)
from r3jax.world.scene import Scene
from r3jax.world.verify import _item, _number, _split, parse_ref

STOP = "no further edit needed"
_FLIP = {("left", "of"): ("right", "of"), ("right", "of"): ("left", "of"),
         ("to", "the", "left", "of"): ("to", "the", "right", "of"),
         ("to", "the", "right", "of"): ("to", "the", "left", "of"),
         ("above",): ("below",), ("below",): ("above",)}


# --- surface structure -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
  """A listing item: a kind count, or text outside the grammar."""
  fact: KindCount | Invalid

  @property
  def text(self) -> str:
    f = self.fact
    return f.text if isinstance(f, Invalid) else _item_text(f)


@dataclasses.dataclass(frozen=True)
class Clause:
  """"SUBJ is WORDS OBJ", or just "WORDS OBJ" when it continues the subject
  of the clause before it (`shared`); `bad` holds unparsable text."""
  subject: Ref | None = None
  words: tuple[str, ...] = ()
  obj: Ref | None = None
  shared: bool = False
  bad: str | None = None

  @property
  def relation(self) -> Relation | None:
    if self.bad is not None:
      return None
    rel, swap = REL_WORDS[self.words]
    return Relation(self.obj, rel, self.subject) if swap else Relation(
        self.subject, rel, self.obj)

  @property
  def text(self) -> str:  # the full clause, as an instruction names it
    if self.bad is not None:
      return self.bad
    return f"{ref_text(self.subject)} is {' '.join(self.words)} {ref_text(self.obj)}"

  def surface(self) -> str:
    if self.bad is not None or not self.shared:
      return self.text
    return f"{' '.join(self.words)} {ref_text(self.obj)}"


@dataclasses.dataclass(frozen=True)
class Listing:
  head: tuple[str, ...]
  total: int | None
  items: tuple[Item, ...]

  def text(self) -> str:
    items = _join([i.text for i in self.items]) if self.items else ""
    if self.total is not None:
      verb, noun = ("is", "object") if self.total == 1 else ("are", "objects")
      count = f"there {verb} {NUMBERS[self.total]} {noun}"
      return f"{count} : {items}" if items else count
    head = self.head
    if head[0] == "there":
      first = self.items[0].fact
      one = isinstance(first, Invalid) or first.n == 1
      head = ("there", "is" if one else "are")
    return " ".join(head) + " " + items


@dataclasses.dataclass(frozen=True)
class Relations:
  clauses: tuple[Clause, ...]

  def text(self) -> str:
    return " and ".join(c.surface() for c in self.clauses)


@dataclasses.dataclass(frozen=True)
class Garbage:
  words: str

  def text(self) -> str:
    return self.words


Sentence = Listing | Relations | Garbage


def read(text: str, cfg: WorldConfig) -> list[Sentence]:
  """The caption's sentences; render(read(t)) == t for any reference caption."""
  out: list[Sentence] = []
  for tokens in _split(text.split(), "."):
    if tokens:
      out.append(_sentence(tokens, cfg))
  return out


def _sentence(tokens: list[str], cfg: WorldConfig) -> Sentence:
  for head in LISTING_HEADS:
    if tuple(tokens[:len(head)]) == head:
      return _listing(head, tokens[len(head):], cfg)
  if tokens[0] == "the":
    return _relations(tokens, cfg)
  return Garbage(" ".join(tokens))


def _listing(head, tokens, cfg) -> Sentence:
  total = None
  if len(tokens) >= 2 and tokens[1] in ("object", "objects"):
    n = _number(tokens[0], cfg)
    if n is None or (tokens[1] == "object") != (n == 1):
      return Garbage(" ".join(head + tuple(tokens)))
    total, tokens = n, tokens[2:]
    if tokens and tokens[0] != ":":
      return Garbage(" ".join(head + tuple(tokens)))
    tokens = tokens[1:]
  parts = [p for part in _split(tokens, ",")
           for p in _split(part, "and")]
  items = tuple(Item(_item(p, cfg)) for p in parts if p)
  if total is None and not items:
    return Garbage(" ".join(head))
  return Listing(head, total, items)


def _relations(tokens, cfg) -> Relations:
  clauses, subject = [], None
  for part in _split(tokens, "and"):
    predicate, shared = part, True
    if part[:1] == ["the"]:
      k = part.index("is") if "is" in part else len(part)
      subject, predicate, shared = (parse_ref(part[:k], cfg), part[k + 1:],
                                    False)
    clause = None
    for words in REL_WORDS:
      if tuple(predicate[:len(words)]) == words:
        obj = parse_ref(predicate[len(words):], cfg)
        if subject is not None and obj is not None:
          clause = Clause(subject, words, obj, shared)
        break
    clauses.append(clause or Clause(bad=" ".join(part), shared=shared))
  return Relations(tuple(clauses))


def render(sentences: list[Sentence]) -> str:
  return " . ".join(s.text() for s in sentences)


# --- diagnosis -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Edit:
  """One edit at (sentence, part); part indexes items or clauses, -1 the
  total. op is "replace", "add" or "remove"; `new` is the replacement."""
  op: str
  sentence: int
  part: int
  old: str = ""
  new: Item | Clause | int | None = None

  @property
  def instruction(self) -> str:
    new = self.new
    new_text = (f"{NUMBERS[new]} {'object' if new == 1 else 'objects'}"
                if isinstance(new, int) else new.text if new else "")
    if self.op == "replace":
      return f"replace {self.old} with {new_text}"
    if self.op == "add":
      return f"add {new_text}"
    return f"remove {self.old}"


def _kind(f: KindCount) -> tuple[str, str, str]:
  return (f.size, f.color, f.shape)


def _stated_kinds(sentences) -> list:
  """The kinds the listings name, in order of first mention."""
  return list(dict.fromkeys(
      _kind(it.fact) for s in sentences if isinstance(s, Listing)
      for it in s.items if isinstance(it.fact, KindCount)))


def _claims(s: Listing) -> dict:
  """The count each kind's mentions in a listing add up to, in order of
  first mention."""
  claims: dict = {}
  for it in s.items:
    if isinstance(it.fact, KindCount):
      claims[_kind(it.fact)] = claims.get(_kind(it.fact), 0) + it.fact.n
  return claims


def _total_text(n: int) -> str:
  return f"{NUMBERS[n]} {'object' if n == 1 else 'objects'}"


def diagnose(text: str, scene: Scene, cfg: WorldConfig) -> Edit | None:
  """The first problem of the caption as an Edit, or None when it is right
  (verify(text).v_strict)."""
  sentences = read(text, cfg)
  return _diagnose(sentences, scene, cfg)


def _diagnose(sentences, scene, cfg) -> Edit | None:
  # 1. Text outside the grammar.
  for si, s in enumerate(sentences):
    if isinstance(s, Garbage):
      return Edit("remove", si, -2, s.words)
    parts = s.items if isinstance(s, Listing) else s.clauses
    for pi, p in enumerate(parts):
      if (isinstance(p, Item) and isinstance(p.fact, Invalid)) or (
          isinstance(p, Clause) and p.bad is not None):
        return Edit("remove", si, pi, p.text)
  # 2. False kind counts. As the verifier reads a listing, the mentions of
  # one kind in it add up to one claim ("exactly n objects of this kind"),
  # and listings are claims of their own: a repeated true listing is true.
  stated = _stated_kinds(sentences)
  truth = scene.kind_counts
  unstated = [k for k in sorted(truth) if k not in stated]
  for si, s in enumerate(sentences):
    if not isinstance(s, Listing):
      continue
    for k, n in _claims(s).items():
      want = truth.get(k, 0)
      if n == want:
        continue
      mentions = [pi for pi, it in enumerate(s.items) if _kind(it.fact) == k]
      right = [pi for pi in mentions if s.items[pi].fact.n == want]
      if right:  # a true mention with others of its kind beside it
        pi = next(pi for pi in mentions if pi != right[-1])
        return Edit("remove", si, pi, s.items[pi].text)
      pi = mentions[0]
      it = s.items[pi]
      if want:
        new = KindCount(*k, want)
      elif unstated:
        best = min(unstated, key=lambda u: sum(a != b for a, b in zip(u, k)))
        new = KindCount(*best, truth[best])
      else:
        return Edit("remove", si, pi, it.text)
      return Edit("replace", si, pi, it.text, Item(new))
  # 3. False totals.
  for si, s in enumerate(sentences):
    if isinstance(s, Listing) and s.total is not None and (
        s.total != len(scene.objects)):
      return Edit("replace", si, -1, _total_text(s.total), len(scene.objects))
  # 4. False relations.
  for si, s in enumerate(sentences):
    if not isinstance(s, Relations):
      continue
    for pi, c in enumerate(s.clauses):
      if is_true(c.relation, scene):
        continue
      flipped = dataclasses.replace(c, words=_FLIP[c.words])
      i, j = resolve(c.subject, scene), resolve(c.obj, scene)
      if i is not None and j is not None and i != j and is_true(
          flipped.relation, scene):
        return Edit("replace", si, pi, c.text, flipped)
      return Edit("remove", si, pi, c.text)
  # 5. Kinds left out.
  if unstated:
    k = unstated[0]
    si = next((i for i, s in enumerate(sentences) if isinstance(s, Listing)),
              -1)
    return Edit("add", si, -1, "", Item(KindCount(*k, truth[k])))
  # 6. Checklist relations left out.
  have = {fact_key(c.relation, scene) for s in sentences
          if isinstance(s, Relations) for c in s.clauses}
  for rel in chain(scene, cfg):
    if fact_key(rel, scene) not in have:
      a, b = resolve(rel.a, scene), resolve(rel.b, scene)
      words = next(w for w, (r, sw) in REL_WORDS.items()
                   if r == rel.rel and not sw and len(w) <= 2)
      clause = Clause(_shortest_refs(scene, a)[0], words,
                      _shortest_refs(scene, b)[0])
      return Edit("add", -1, -1, "", clause)
  return None


# --- applying an edit ------------------------------------------------------


def _consistent_total(s: Listing) -> bool:
  return s.total is not None and all(
      isinstance(i.fact, KindCount) for i in s.items) and s.total == sum(
          i.fact.n for i in s.items)


def _with_items(s: Listing, items: tuple[Item, ...], cfg: WorldConfig
                ) -> Sentence | None:
  """The listing with `items`; a total that agreed with the old items is
  kept in step, and dropped where it would pass the world's max_objects
  (no number word the verifier reads)."""
  total = s.total
  if _consistent_total(s) and all(isinstance(i.fact, KindCount) for i in items):
    total = sum(i.fact.n for i in items) or None
  if total is None and not items:
    return None
  if total is not None and total > cfg.max_objects:
    total = None
  return Listing(s.head, total, items)


def apply(edit: Edit, text: str, scene: Scene, cfg: WorldConfig) -> str:
  """The caption after `edit` (from `diagnose` on the same text and scene)."""
  sentences: list[Sentence | None] = list(read(text, cfg))
  if edit.op == "add" and isinstance(edit.new, Clause):
    sentences.append(Relations((edit.new,)))
  elif edit.op == "add":
    if edit.sentence < 0:
      sentences.insert(0, Listing(("there", "is"), None, (edit.new,)))
    else:
      s = sentences[edit.sentence]
      sentences[edit.sentence] = _with_items(s, s.items + (edit.new,), cfg)
  elif edit.part == -2:  # a whole unparsable sentence
    sentences[edit.sentence] = None
  elif edit.part == -1:  # the total
    s = sentences[edit.sentence]
    sentences[edit.sentence] = dataclasses.replace(s, total=edit.new)
  else:
    s = sentences[edit.sentence]
    if isinstance(s, Listing):
      items = list(s.items)
      if edit.op == "replace":
        # Every other mention of the same kind goes with the replaced one.
        old = items[edit.part].fact
        items[edit.part] = edit.new
        if isinstance(old, KindCount):
          items = [it for i, it in enumerate(items) if i == edit.part or not (
              isinstance(it.fact, KindCount) and _kind(it.fact) == _kind(old))]
      else:
        del items[edit.part]
      sentences[edit.sentence] = _with_items(s, tuple(items), cfg)
      if isinstance(old := s.items[edit.part].fact, KindCount):
        new = edit.new.fact if edit.op == "replace" else None
        sentences = _follow(sentences, _kind(old),
                            _kind(new) if new else None, scene)
    else:
      clauses = list(s.clauses)
      if edit.op == "replace":
        clauses[edit.part] = edit.new
      else:
        del clauses[edit.part]
      sentences[edit.sentence] = _regroup(clauses)
  return render([s for s in sentences if s is not None])


def from_instruction(instruction: str, text: str, cfg: WorldConfig,
                     scene: Scene | None = None) -> Edit | None:
  """The Edit an instruction names on `text` (for `apply`): its old phrase
  found among the caption's items, totals, clauses or unparsable sentences,
  its new phrase read as an item, a total or a clause. None for the stop
  string, text that is not an instruction, an old phrase the caption does
  not hold, or a new phrase outside the grammar.

  The old phrase is its first occurrence; given the scene, an item phrase is
  the first one whose listing's count of its kind is false, where there is
  one (mentions of a kind add up within a listing, so one phrase can be true
  in one listing and false in another). Given the scene, the instruction of
  `diagnose` names the edit `diagnose` made."""
  parsed = parse_instruction(instruction)
  if parsed is None or parsed[0] == "stop":
    return None
  op, old, new_text = parsed
  sentences = read(text, cfg)
  new = None
  if op != "remove":
    words = new_text.split()
    if len(words) == 2 and words[1] in ("object", "objects"):
      new = _number(words[0], cfg)
    elif words[:1] == ["the"]:
      clauses = _relations(words, cfg).clauses
      new = clauses[0] if len(clauses) == 1 and clauses[0].bad is None else None
    else:
      fact = _item(words, cfg)
      new = Item(fact) if isinstance(fact, KindCount) else None
    if new is None:
      return None
  if op == "add":
    if isinstance(new, int):
      return None
    si = next((i for i, s in enumerate(sentences) if isinstance(s, Listing)),
              -1)
    return Edit("add", -1 if isinstance(new, Clause) else si, -1, "", new)
  found = None
  for si, s in enumerate(sentences):
    if isinstance(s, Garbage):
      if op == "remove" and s.words == old:
        return Edit("remove", si, -2, old)
      continue
    if isinstance(s, Listing) and s.total is not None and (
        _total_text(s.total) == old) and isinstance(new, int):
      return Edit("replace", si, -1, old, new)
    parts = s.items if isinstance(s, Listing) else s.clauses
    for pi, part in enumerate(parts):
      if part.text != old:
        continue
      if isinstance(new, Clause) and isinstance(part, Clause):
        # A clause that continued its subject goes on doing so.
        new = dataclasses.replace(new, shared=part.shared and (
            new.subject == part.subject))
      fits = new is None or isinstance(new, Item if isinstance(s, Listing)
                                       else Clause)
      if fits:
        edit = Edit(op, si, pi, old, new)
        if scene is None or not _true_claim(s, part, scene):
          return edit
        found = found or edit
  return found


def _true_claim(s: Sentence, part: Item | Clause, scene: Scene) -> bool:
  """Whether `part` is a listing item whose kind the listing counts right."""
  if not (isinstance(part, Item) and isinstance(part.fact, KindCount)):
    return False
  k = _kind(part.fact)
  return _claims(s)[k] == scene.kind_counts.get(k, 0)


def _regroup(clauses: list[Clause]) -> Relations | None:
  """A continuation keeps sharing a subject only if the clause before it
  still has that subject; no clauses, no sentence."""
  out = []
  for c in clauses:
    if c.shared and (not out or out[-1].bad is not None or
                     out[-1].subject != c.subject):
      c = dataclasses.replace(c, shared=False)
    out.append(c)
  return Relations(tuple(out)) if out else None


def _matches(ref: Ref, kind: tuple[str, str, str]) -> bool:
  return all(v is None or v == k for v, k in zip(
      (ref.size, ref.color, ref.shape), kind))


def _name(ref: Ref, kinds, scene: Scene) -> Ref | None:
  """`ref` if it names one object of the scene; else the shortest name of
  the one object of the one stated kind it describes; else None."""
  if resolve(ref, scene) is not None:
    return ref
  meant = [k for k in kinds if _matches(ref, k)]
  hits = [i for i, o in enumerate(scene.objects) if meant and o.kind == meant[0]]
  if len(meant) == 1 and len(hits) == 1:
    return _shortest_refs(scene, hits[0])[0]
  return None


def _follow(sentences, old, new, scene):
  """Relation clauses follow an item edit: references to a replaced kind take
  the new values of the attributes they state, references to a removed kind
  that nothing else stated matches go, and a reference the edit made
  ambiguous becomes the shortest name of the object it meant (see `_name`).
  A clause that loses a reference is dropped."""
  kinds = _stated_kinds([s for s in sentences if s is not None])
  out = []
  for s in sentences:
    if not isinstance(s, Relations):
      out.append(s)
      continue
    clauses = []
    for c in s.clauses:
      if c.bad is not None:
        clauses.append(c)
        continue
      refs = []
      for r in (c.subject, c.obj):
        if new is not None and _matches(r, old):
          r = Ref(*(n if v is not None else None for v, n in zip(
              (r.size, r.color, r.shape), new)))
        refs.append(_name(r, kinds, scene))
      if None not in refs:
        clauses.append(dataclasses.replace(c, subject=refs[0], obj=refs[1]))
    out.append(_regroup(clauses))
  return out


def correct(text: str, scene: Scene, cfg: WorldConfig, max_edits: int = 16
            ) -> tuple[str, list[str]]:
  """Applies diagnosed edits until none is left: (caption, instructions)."""
  done = []
  for _ in range(max_edits):
    edit = diagnose(text, scene, cfg)
    if edit is None:
      return text, done
    text = apply(edit, text, scene, cfg)
    done.append(edit.instruction)
  raise RuntimeError(f"no fixed point after {max_edits} edits: {done}")


# --- instruction text ------------------------------------------------------


def instruction(text: str, scene: Scene, cfg: WorldConfig) -> str:
  """The reflect target for a caption: one instruction or the stop string."""
  edit = diagnose(text, scene, cfg)
  return STOP if edit is None else edit.instruction


def parse_instruction(text: str) -> tuple[str, str, str] | None:
  """(op, old, new) of an instruction, ("stop", "", "") for the stop string,
  None when it is not an instruction."""
  words = text.split()
  if " ".join(words) == STOP:
    return ("stop", "", "")
  if len(words) >= 2 and words[0] in ("add", "remove"):
    rest = " ".join(words[1:])
    return (words[0], rest, "") if words[0] == "remove" else ("add", "", rest)
  if words[:1] == ["replace"] and "with" in words[2:-1]:
    k = words.index("with", 2)
    return ("replace", " ".join(words[1:k]), " ".join(words[k + 1:]))
  return None
