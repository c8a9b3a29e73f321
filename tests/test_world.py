"""The world's ground truth: layout, rendering, language and the verifier."""

import collections
import re

import numpy as np
import pytest

from r3jax import world
from r3jax.world import config as world_config
from r3jax.world.facts import Invalid, KindCount, Relation, Total

SMALL = world.WorldConfig(image_size=32)
# Harder world: four objects, both relation axes, more vocabulary.
HARD = world.WorldConfig(image_size=48, max_objects=4,
                         shapes=("circle", "square", "triangle", "diamond"),
                         colors=("red", "green", "blue", "orange", "white"),
                         sizes=("small", "medium", "large"),
                         relation_axes=("horizontal", "vertical"))
# Many duplicates: few kinds, so groups ("two small red circles") are common.
DUPS = world.WorldConfig(image_size=32, shapes=("circle", "square"),
                         colors=("red", "blue"), sizes=("small",))
CONFIGS = pytest.mark.parametrize("cfg", [SMALL, HARD, DUPS],
                                  ids=["small", "hard", "dups"])


def _scenes(cfg, n, seed=0):
  rng = np.random.default_rng(seed)
  return [world.sample_scene(rng, cfg) for _ in range(n)]


def _same_example(a, b):
  return (a["image"].tobytes() == b["image"].tobytes()
          and all(np.array_equal(a["scene"][k], b["scene"][k])
                  for k in a["scene"])
          and (a["captions"], a["vqa"], a["ita"]) ==
          (b["captions"], b["vqa"], b["ita"]))


def test_examples_are_a_function_of_seed_and_index():
  a = world.generate_example(SMALL, 7, 3)
  assert _same_example(a, world.generate_example(SMALL, 7, 3))
  for other in (world.generate_example(SMALL, 7, 4),
                world.generate_example(SMALL, 8, 3)):
    assert not _same_example(a, other)
    assert a["captions"] != other["captions"]


@CONFIGS
def test_scene_arrays_round_trip_with_padding(cfg):
  for scene in _scenes(cfg, 50):
    arrays = world.scene_to_arrays(scene, cfg)
    n = len(scene.objects)
    assert int(arrays["num_objects"]) == n
    for k in ("shape_id", "color_id", "size_id", "x", "y"):
      assert arrays[k].shape == (cfg.max_objects,)
      assert np.all(arrays[k][n:] == -1)
    assert world.scene_from_arrays(arrays, cfg) == scene


@CONFIGS
def test_layout_and_rendering(cfg):
  bg = np.array(world_config.BACKGROUND, np.uint8)
  for scene in _scenes(cfg, 40):
    xs = np.array([o.x for o in scene.objects])
    ys = np.array([o.y for o in scene.objects])
    cols, rows = np.floor(xs * cfg.grid), np.floor(ys * cfg.grid)
    assert len(set(cols)) == len(set(rows)) == len(scene.objects)
    masks = [world.object_mask(o, cfg) for o in scene.objects]
    assert all(m.sum() > 0 for m in masks)
    assert np.all(np.sum(masks, axis=0) <= 1), "objects overlap"
    img = world.render(scene, cfg)
    assert img.shape == (cfg.image_size, cfg.image_size, 3)
    assert img.dtype == np.uint8
    for o, m in zip(scene.objects, masks):
      assert np.all(img[m] == world_config.PALETTE[o.color])
      centre = img[int(o.y * cfg.image_size), int(o.x * cfg.image_size)]
      assert tuple(centre) == world_config.PALETTE[o.color]
    assert np.all(img[~np.any(masks, axis=0)] == bg)


def test_sizes_are_clearly_different():
  small = world.Object("circle", "red", "small", 0.5, 0.5)
  large = world.Object("circle", "red", "large", 0.5, 0.5)
  ratio = (world.object_mask(large, SMALL).sum() /
           world.object_mask(small, SMALL).sum())
  assert 3.0 < ratio < 5.5  # area ratio of a 2x radius


@CONFIGS
def test_reference_captions_verify_perfectly(cfg):
  lengths = []
  for k, scene in enumerate(_scenes(cfg, 150)):
    rng = np.random.default_rng(k)
    for text in world.captions(scene, rng, cfg, 5):
      s = world.verify(text, scene, cfg)
      assert (s.precision, s.recall, s.f1, s.v_frac, s.hallucination) == (
          1, 1, 1, 1, 0), (text, s)
      assert s.v_strict and s.parsed
      assert world.parse_caption(text, cfg) is not None
      lengths.append(len(text.split()))
  if cfg is SMALL:
    assert max(lengths) <= 36


def _kind_counts(facts):
  return {(f.size, f.color, f.shape): f.n for f in facts
          if isinstance(f, KindCount)}


def _check_corruption(kind, text, scene, cfg):
  facts = world.parse_caption(text, cfg)
  assert facts is not None, text
  s = world.verify(text, scene, cfg)
  assert not s.v_strict and s.v_frac < 1
  truth = dict(scene.kind_counts)
  said = _kind_counts(facts)
  totals = [f.n for f in facts if isinstance(f, Total)]
  assert all(t == sum(said.values()) for t in totals), "inconsistent total"
  if kind in ("color", "shape", "size"):
    (old,) = set(truth) - set(said)
    (new,) = set(said) - set(truth)
    pos = ("size", "color", "shape").index(kind)
    assert [i for i in range(3) if old[i] != new[i]] == [pos]
    assert said[new] == truth[old]
    assert s.precision < 1 and s.recall < 1
  elif kind == "count":
    assert set(said) == set(truth)
    diffs = [said[k] - truth[k] for k in truth if said[k] != truth[k]]
    assert diffs in ([1], [-1])
    assert s.precision < 1 and s.recall < 1
  elif kind == "missing":
    (gone,) = set(truth) - set(said)
    assert set(said) == set(truth) - {gone}
    assert all(said[k] == truth[k] for k in said)
    assert s.recall < 1
  elif kind == "extra":
    (new,) = set(said) - set(truth)
    assert set(truth) <= set(said) and said[new] == 1
    assert all(said[k] == truth[k] for k in truth)
    assert s.precision < 1
  elif kind == "relation":
    assert said == truth
    rels = [f for f in facts if isinstance(f, Relation)]
    false = [f for f in rels if not world.facts.is_true(f, scene)]
    assert len(false) == 1
    flipped = Relation(false[0].b, false[0].rel, false[0].a)
    assert world.facts.is_true(flipped, scene)
    assert s.precision < 1 and s.recall < 1


@CONFIGS
def test_each_corruption_changes_exactly_one_fact(cfg):
  seen = collections.Counter()
  for k, scene in enumerate(_scenes(cfg, 120, seed=1)):
    rng = np.random.default_rng(k)
    for kind in world.available_corruptions(scene, cfg):
      _check_corruption(kind, world.corrupt(scene, rng, cfg, kind), scene, cfg)
      seen[kind] += 1
  expected = set(world.CORRUPTIONS) - ({"size"} if cfg is DUPS else set())
  assert set(seen) == expected


def test_impossible_corruption_is_a_clear_error():
  scene = world.Scene((world.Object("circle", "red", "small", 0.2, 0.2),))
  with pytest.raises(ValueError, match="'relation' is not possible"):
    world.corrupt(scene, np.random.default_rng(0), SMALL, "relation")


def _matching(arrays, cfg, words):
  """Objects matching a description like "small red circle(s)/object(s)"."""
  n = int(arrays["num_objects"])
  keep = np.ones(n, bool)
  for w in words:
    if w in ("object", "objects"):
      continue
    if w in cfg.sizes:
      keep &= arrays["size_id"][:n] == cfg.sizes.index(w)
    elif w in cfg.colors:
      keep &= arrays["color_id"][:n] == cfg.colors.index(w)
    else:
      shape = w[:-1] if w.endswith("s") and w[:-1] in cfg.shapes else w
      keep &= arrays["shape_id"][:n] == cfg.shapes.index(shape)
  return np.flatnonzero(keep)


def _answer(question, arrays, cfg):
  """The answer computed from the scene arrays alone."""
  words = question.split()
  if m := re.fullmatch(r"is there an? (.+) \?", question):
    return "yes" if len(_matching(arrays, cfg, m[1].split())) else "no"
  if m := re.fullmatch(r"how many (.+) are there \?", question):
    return world_config.NUMBERS[len(_matching(arrays, cfg, m[1].split()))]
  if m := re.fullmatch(r"what (color|shape|size) is the (.+) \?", question):
    (i,) = _matching(arrays, cfg, m[2].split())
    names = {"color": cfg.colors, "shape": cfg.shapes, "size": cfg.sizes}
    return names[m[1]][arrays[f"{m[1]}_id"][i]]
  rel = r"(left of|right of|to the left of|to the right of|above|below)"
  m = re.fullmatch(rf"is the (.+?) {rel} the (.+) \?", question)
  assert m, question
  (a,) = _matching(arrays, cfg, m[1].split())
  (b,) = _matching(arrays, cfg, m[3].split())
  x, y = arrays["x"], arrays["y"]
  holds = {"left": x[a] < x[b], "right": x[a] > x[b],
           "above": y[a] < y[b], "below": y[a] > y[b]}
  return "yes" if holds[next(w for w in words if w in holds)] else "no"


@CONFIGS
def test_vqa_answers_match_an_independent_computation(cfg):
  by_type = collections.defaultdict(list)
  for k in range(150):
    ex = world.generate_example(cfg, 5, k)
    assert len(ex["vqa"]) == cfg.n_questions
    for qtype, question, answer in ex["vqa"]:
      assert qtype in world.QTYPES
      assert answer == _answer(question, ex["scene"], cfg), question
      by_type[qtype].append(answer)
  assert set(by_type) == set(world.QTYPES)
  for qtype in ("existence", "relation"):
    yes = np.mean([a == "yes" for a in by_type[qtype]])
    assert 0.35 < yes < 0.65, (qtype, yes)


def test_vqa_covers_every_available_type_once():
  for scene in _scenes(SMALL, 50):
    types = world.available_qtypes(scene)
    qs = world.vqa(scene, np.random.default_rng(0), SMALL, len(types))
    assert sorted(t for t, _, _ in qs) == sorted(types)


@CONFIGS
def test_ita_labels_are_correct_and_balanced(cfg):
  labels = []
  for k in range(80):
    ex = world.generate_example(cfg, 9, k)
    scene = world.scene_from_arrays(ex["scene"], cfg)
    for text, label in ex["ita"]:
      assert world.verify(text, scene, cfg).v_strict == (label == "yes"), text
      labels.append(label)
  assert labels.count("yes") == labels.count("no")


def test_verifier_never_raises_and_scores_garbage_as_wrong():
  cfg = SMALL
  scene = _scenes(cfg, 1, seed=3)[0]
  rng = np.random.default_rng(0)
  vocab = world.vocabulary(cfg)
  ref = world.captions(scene, rng, cfg, 1)[0].split()
  texts = ["", " ", ".", ". . .", "and", "the", "there are", "?", "é ü",
           "there are zero objects", "the circle is left of the circle",
           "there are nine objects : a huge red circle", "\t\n", "x" * 500]
  texts += [" ".join(ref[:k]) for k in range(len(ref))]  # truncations
  for _ in range(300):
    n = rng.integers(1, 30)
    pool = vocab if rng.random() < 0.7 else vocab + ["<unk>", "cat", "@@"]
    texts.append(" ".join(rng.choice(pool, size=n)))
  for text in texts:
    s = world.verify(text, scene, cfg)
    assert not s.v_strict, text
    for v in (s.precision, s.recall, s.f1, s.v_frac, s.hallucination):
      assert 0.0 <= v <= 1.0
    assert s.hallucination == 1.0 - s.precision


def test_unparsable_clauses_count_as_false_facts():
  scene = world.Scene((world.Object("circle", "red", "small", 0.2, 0.2),
                       world.Object("square", "blue", "large", 0.7, 0.6)))
  good = ("there is a small red circle and a large blue square . "
          "the circle is left of the square")
  assert world.verify(good, scene, SMALL).v_strict
  s = world.verify(good + " . purple elephants", scene, SMALL)
  assert (s.precision, s.recall, s.parsed, s.v_strict) == (0.75, 1, False,
                                                           False)
  assert s.v_frac == 3 / 4  # 3 checklist items + "all true", which fails
  assert world.parse_caption(good + " . purple elephants", SMALL) is None
  facts = world.parse_caption(good, SMALL)
  assert not any(isinstance(f, Invalid) for f in facts)
  empty = world.verify("", scene, SMALL)
  assert (empty.precision, empty.recall, empty.f1, empty.v_frac) == (0, 0, 0, 0)


def test_paraphrases_mean_the_same():
  scene = world.Scene((world.Object("circle", "red", "small", 0.2, 0.7),
                       world.Object("circle", "red", "small", 0.5, 0.2),
                       world.Object("square", "blue", "large", 0.8, 0.5)))
  for text in ("there are three objects : two small red circles and a large "
               "blue square",
               "the image shows a large blue square , a small red circle and "
               "a small red circle",
               "there is a large blue square . there are two small red "
               "circles"):
    assert world.verify(text, scene, SMALL).v_strict, text
  # A relation about an ambiguous referent is false, not skipped.
  s = world.verify("there are two small red circles and a large blue square . "
                   "the red circle is left of the square", scene, SMALL)
  assert s.precision == 2 / 3 and not s.v_strict


def test_config_validation_errors_are_clear():
  cases = [(dict(max_objects=5, grid=4), "max_objects=5 > grid=4"),
           (dict(colors=("red", "mauve")), r"unknown colors \['mauve'\]"),
           (dict(shapes=("circle", "circle")), "shapes has duplicates"),
           (dict(image_size=12), "radius"),
           (dict(min_objects=3, max_objects=2), "min_objects <= max_objects"),
           (dict(sizes=("large", "small")), "smallest to largest"),
           (dict(relation_axes=("diagonal",)), "unknown relation_axes"),
           (dict(shapes=("circle",), colors=("red",), sizes=("small",)),
            "two kinds"),
           (dict(n_questions=0), "n_questions must be >= 1"),
           (dict(number_words=2), r"number_words=2 must be in \[max_objects=3"),
           (dict(number_words=11), r"number_words=11 must be in")]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      world.WorldConfig(**kwargs)
  assert world.WorldConfig(max_objects=5).grid == 5


def test_number_words_keep_a_larger_worlds_vocabulary():
  """The easy world with the default world's number words has the default
  world's vocabulary (so its token ids), and draws only its own scenes."""
  easy = world.WorldConfig(min_objects=1, max_objects=1)
  kept = world.WorldConfig(min_objects=1, max_objects=1, number_words=3)
  default = world.WorldConfig()
  assert world.vocabulary(kept) == world.vocabulary(default)
  assert set(world.vocabulary(default)) - set(world.vocabulary(easy)) == {
      "two", "three"}
  assert kept.numbers == 3 and easy.numbers == 1 and default.numbers == 3
  # Naming the default is the default: one world, one description.
  assert world.WorldConfig(number_words=3) == default
  for k in range(20):
    assert world.generate_example(kept, 0, k)["scene"]["num_objects"] == 1
  # A count the vocabulary states but the world cannot hold is a false
  # fact that the editor corrects, not an unparsed caption.
  scene = world.Scene((world.Object("square", "yellow", "large", 0.5, 0.5),))
  two = "there are two objects : two large yellow squares"
  score = world.verify(two, scene, kept)
  assert score.parsed and score.hallucination == 1.0 and not score.v_strict
  assert not world.verify(two, scene, easy).parsed
  from r3jax.world import edit
  assert edit.correct(two, scene, kept)[0] == (
      "there is one object : a large yellow square")


@CONFIGS
def test_every_word_is_in_the_vocabulary(cfg):
  vocab = world.vocabulary(cfg)
  assert vocab == sorted(set(vocab))
  assert {"replace", "with", "add", "remove", "no", "further", "edit",
          "needed"} <= set(vocab)
  words = set()
  for k in range(100):
    ex = world.generate_example(cfg, 2, k)
    texts = ex["captions"] + [t for pair in ex["ita"] for t in pair]
    texts += [t for triple in ex["vqa"] for t in triple[1:]]
    for t in texts:
      assert t == " ".join(t.split())  # single spaces, no padding
      words.update(t.split())
  assert words <= set(vocab), words - set(vocab)
