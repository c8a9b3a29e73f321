"""Edit instructions: the reflect / refine targets the verifier derives."""

import dataclasses

import numpy as np
import pytest

from r3jax.world import (CORRUPTIONS, KindCount, WorldConfig,
                         available_corruptions, captions, corrupt, describe,
                         reference_facts, sample_scene, verify, vocabulary)
from r3jax.world import edit
from r3jax.world.scene import Object, Scene

CFG = WorldConfig()


def _scene(*objs):
  return Scene(tuple(Object(shape=s, color=c, size=z, x=x, y=0.5)
                     for z, c, s, x in objs))


TWO = _scene(("large", "red", "circle", 0.2), ("small", "blue", "square", 0.8))


@pytest.mark.parametrize("draft, instruction, fixed", [
    ("there are two objects : a large red circle and a small blue square . "
     "the circle is left of the square", edit.STOP, None),
    ("there are two objects : a large red circle and a small green square . "
     "the circle is left of the green square",
     "replace a small green square with a small blue square",
     "there are two objects : a large red circle and a small blue square . "
     "the circle is left of the blue square"),
    ("there are three objects : two large red circles and a small blue square",
     "replace two large red circles with a large red circle",
     "there are two objects : a large red circle and a small blue square"),
    ("the image shows a large red circle and a small blue square . "
     "the square is left of the circle",
     "replace the square is left of the circle with "
     "the square is right of the circle",
     "the image shows a large red circle and a small blue square . "
     "the square is right of the circle"),
    ("there is a large red circle . the circle is left of the square",
     "add a small blue square",
     "there is a large red circle and a small blue square . "
     "the circle is left of the square"),
    ("there are three objects : a large red circle , a small blue square and "
     "a small green triangle . the triangle is right of the square",
     "remove a small green triangle",
     "there are two objects : a large red circle and a small blue square"),
    ("there is a large red circle and a small blue square",
     "add the circle is left of the square",
     "there is a large red circle and a small blue square . "
     "the circle is left of the square"),
    ("there are three objects : a large red circle and a small blue square . "
     "the circle is left of the square",
     "replace three objects with two objects",
     "there are two objects : a large red circle and a small blue square . "
     "the circle is left of the square"),
    ("there is a large red circle and a small blue square . blue red is the",
     "remove blue red is the",
     "there is a large red circle and a small blue square"),
])
def test_hand_computed_edits(draft, instruction, fixed):
  assert edit.instruction(draft, TWO, CFG) == instruction
  e = edit.diagnose(draft, TWO, CFG)
  if fixed is None:
    assert e is None and verify(draft, TWO, CFG).v_strict
    return
  assert edit.apply(e, draft, TWO, CFG) == fixed
  op = edit.parse_instruction(instruction)
  assert op is not None and op[0] == instruction.split()[0]


def test_reference_captions_read_back_exactly_and_need_no_edit():
  rng = np.random.default_rng(0)
  for _ in range(200):
    scene = sample_scene(rng, CFG)
    for c in captions(scene, rng, CFG, 3):
      assert edit.render(edit.read(c, CFG)) == c
      assert edit.instruction(c, scene, CFG) == edit.STOP


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_is_caught_and_fixed(kind):
  """Each edit names a problem, never lowers V_frac, and the edits end at a
  caption the verifier accepts; a reversed relation takes exactly one edit and
  an attribute or extra object usually does."""
  rng = np.random.default_rng(1)
  seen, one_edit = 0, 0
  for _ in range(150):
    scene = sample_scene(rng, CFG)
    if kind not in available_corruptions(scene, CFG):
      continue
    text = corrupt(scene, rng, CFG, kind)
    first = edit.instruction(text, scene, CFG)
    assert first != edit.STOP and edit.parse_instruction(first) is not None
    fixed, done = edit.correct(text, scene, CFG)
    assert verify(fixed, scene, CFG).v_strict and done[0] == first
    score, t = verify(text, scene, CFG).v_frac, text
    for _ in done:
      t = edit.apply(edit.diagnose(t, scene, CFG), t, scene, CFG)
      assert verify(t, scene, CFG).v_frac >= score - 1e-9
      score = verify(t, scene, CFG).v_frac
    seen += 1
    one_edit += len(done) == 1
  assert seen >= 20
  if kind == "relation":
    assert one_edit == seen
  if kind in ("color", "size", "extra"):
    assert one_edit >= 0.7 * seen


def test_any_word_salad_is_corrected_without_error():
  rng = np.random.default_rng(2)
  words = vocabulary(CFG)
  for _ in range(300):
    scene = sample_scene(rng, CFG)
    text = " ".join(rng.choice(words, rng.integers(1, 30)))
    fixed, done = edit.correct(text, scene, CFG)
    assert verify(fixed, scene, CFG).v_strict
    assert all(edit.parse_instruction(i) is not None for i in done)


def test_parse_instruction():
  assert edit.parse_instruction("no further edit needed") == ("stop", "", "")
  assert edit.parse_instruction("replace a red circle with two red circles") == (
      "replace", "a red circle", "two red circles")
  assert edit.parse_instruction("add a small red circle") == (
      "add", "", "a small red circle")
  assert edit.parse_instruction("remove the circle is left of the square") == (
      "remove", "the circle is left of the square", "")
  for bad in ("", "replace with", "replace a circle", "add", "circle"):
    assert edit.parse_instruction(bad) is None


ONE = _scene(("small", "red", "circle", 0.5))
TWIN = _scene(("small", "red", "circle", 0.2), ("small", "red", "circle", 0.8))
REPEATED = "there is a small red circle . there is a small red circle"


DOUBLED = "there is a small red circle and a small red circle"
THREE = _scene(("small", "red", "circle", 0.2), ("small", "red", "circle", 0.5),
               ("small", "red", "circle", 0.8))


def _real(e, text, scene):
  """The caption after `e`, which must change it."""
  op, old, new = edit.parse_instruction(e.instruction)
  after = edit.apply(e, text, scene, CFG)
  assert op != "replace" or old != new, e.instruction
  assert after != text, e.instruction
  return after


def test_repeated_listings_are_read_as_the_verifier_reads_them():
  """For the verifier and the editor alike, mentions of one kind in one
  listing add up ("a red circle and a red circle" is two) and each listing
  is a claim of its own: a repeated true listing needs no edit."""
  assert verify(REPEATED, ONE, CFG).v_strict
  assert edit.diagnose(REPEATED, ONE, CFG) is None
  assert edit.instruction(REPEATED, ONE, CFG) == edit.STOP
  assert edit.correct(REPEATED, ONE, CFG) == (REPEATED, [])
  assert verify(REPEATED, TWIN, CFG).v_frac == 0
  assert not verify(REPEATED, TWIN, CFG).v_strict
  e = edit.diagnose(REPEATED, TWIN, CFG)
  assert e.instruction == (
      "replace a small red circle with two small red circles")
  after = _real(e, REPEATED, TWIN)
  assert verify(after, TWIN, CFG).v_frac > 0
  fixed, done = edit.correct(REPEATED, TWIN, CFG)
  assert fixed == (
      "there are two small red circles . there are two small red circles")
  assert verify(fixed, TWIN, CFG).v_strict and len(done) == 2
  # One listing that mentions a kind twice.
  assert verify(DOUBLED, TWIN, CFG).v_strict
  assert edit.diagnose(DOUBLED, TWIN, CFG) is None
  assert not verify(DOUBLED, ONE, CFG).v_strict
  assert edit.correct(DOUBLED, ONE, CFG) == (
      "there is a small red circle", ["remove a small red circle"])
  assert not verify(DOUBLED, THREE, CFG).v_strict
  assert edit.correct(DOUBLED, THREE, CFG) == (
      "there are three small red circles",
      ["replace a small red circle with three small red circles"])


def test_an_item_instruction_names_the_listing_that_counts_wrong():
  """One phrase can be a true count in one listing and a false one in
  another; given the scene, the instruction names the false one."""
  text = ("there is one object : a small red circle . "
          "there is a small red circle and a small red circle")
  e = edit.diagnose(text, ONE, CFG)
  assert e.instruction == "remove a small red circle" and e.sentence == 1
  want = "there is one object : a small red circle . there is a small red circle"
  assert _real(e, text, ONE) == want
  named = edit.from_instruction(e.instruction, text, CFG, ONE)
  assert edit.apply(named, text, ONE, CFG) == want
  assert verify(want, ONE, CFG).v_strict
  assert edit.from_instruction(e.instruction, text, CFG).sentence == 0


def _repeating(scene, rng):
  """A reference caption of `scene` whose listing repeats items (a count
  split into single mentions, or an item said twice), with the listing or
  the whole caption said again or not."""
  facts = reference_facts(scene, rng, CFG)
  items, rest = [], [f for f in facts if not isinstance(f, KindCount)]
  for f in (f for f in facts if isinstance(f, KindCount)):
    way = rng.integers(3)
    if way == 1 and f.n >= 2:
      items += [dataclasses.replace(f, n=1)] * f.n
    else:
      items += [f, f] if way == 2 else [f]
  items = [items[i] for i in rng.permutation(len(items))]
  sentences = describe(rest + items, rng).split(" . ")
  again = [[], sentences[:1], sentences][rng.integers(3)]
  return " . ".join(sentences + again)


def test_edit_agrees_with_verify_on_repeated_listings_and_items():
  """On captions with repeated items and listings, of the scene or of
  another one: diagnose finds nothing to edit exactly when the verifier
  accepts; otherwise each edit changes the caption, its instruction names it
  (given the scene), and `correct` ends at a caption the verifier accepts."""
  rng = np.random.default_rng(5)
  accepted = rejected = 0
  for _ in range(300):
    scene = sample_scene(rng, CFG)
    text = _repeating(scene if rng.random() < 0.5 else sample_scene(rng, CFG),
                      rng)
    if verify(text, scene, CFG).v_strict:
      assert edit.diagnose(text, scene, CFG) is None, text
      accepted += 1
      continue
    fixed, done = edit.correct(text, scene, CFG)
    assert done and verify(fixed, scene, CFG).v_strict, text
    for _ in done:
      e = edit.diagnose(text, scene, CFG)
      after = _real(e, text, scene)
      named = edit.from_instruction(e.instruction, text, CFG, scene)
      assert edit.apply(named, text, scene, CFG) == after, (text, e.instruction)
      text = after
    rejected += 1
  assert accepted >= 50 and rejected >= 100


def test_edit_agrees_with_verify_on_repeated_and_reordered_captions():
  """On every caption the verifier accepts (references, their sentences
  repeated or shuffled) diagnose finds nothing to edit; on every one it
  rejects it names an edit."""
  rng = np.random.default_rng(3)
  checked = 0
  for _ in range(300):
    scene = sample_scene(rng, CFG)
    ref = captions(scene, rng, CFG, 1)[0]
    parts = ref.split(" . ")
    variants = [ref, f"{ref} . {ref}", " . ".join(parts + parts[:1]),
                " . ".join(rng.permutation(parts)),
                corrupt(scene, rng, CFG, rng.choice(
                    available_corruptions(scene, CFG)))]
    for text in variants:
      accepted = verify(text, scene, CFG).v_strict
      assert (edit.diagnose(text, scene, CFG) is None) == accepted, text
      checked += accepted
  assert checked >= 1000


def test_an_instruction_names_the_edit_the_editor_would_make():
  """from_instruction(instruction(t), t) is diagnose(t)'s edit, on every
  corruption and on word salad: the same caption after `apply`."""
  rng = np.random.default_rng(4)
  words = vocabulary(CFG)
  named = 0
  for _ in range(300):
    scene = sample_scene(rng, CFG)
    kinds = available_corruptions(scene, CFG)
    text = (corrupt(scene, rng, CFG, rng.choice(kinds)) if rng.random() < 0.7
            else " ".join(rng.choice(words, rng.integers(1, 20))))
    e = edit.diagnose(text, scene, CFG)
    if e is None:
      continue
    got = edit.from_instruction(e.instruction, text, CFG)
    assert got is not None, (e.instruction, text)
    assert edit.apply(got, text, scene, CFG) == edit.apply(e, text, scene, CFG)
    named += 1
  assert named >= 200
  assert edit.from_instruction(edit.STOP, REPEATED, CFG) is None
  assert edit.from_instruction("remove a large blue circle", REPEATED,
                               CFG) is None  # not in the caption
  assert edit.from_instruction("add a purple blob", REPEATED, CFG) is None


def test_an_edit_never_writes_a_total_past_max_objects():
  """Adding an item to a listing whose total agreed with its items keeps the
  total in step only up to the world's max_objects: "there are four
  objects" is no sentence of a 3-object world, so the total goes."""
  three = _scene(("large", "red", "circle", 0.1),
                 ("small", "blue", "square", 0.5),
                 ("small", "green", "triangle", 0.9))
  draft = ("there are three objects : a large red circle , a small blue "
           "square and a small green square")
  e = edit.from_instruction("add a small green triangle", draft, CFG)
  after = edit.apply(e, draft, three, CFG)
  assert after == ("there is a large red circle , a small blue square , a "
                   "small green square and a small green triangle")
  assert verify(after, three, CFG).parsed
