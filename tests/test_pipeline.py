"""Task formatting and the per-process grain pipeline."""

import jax
import numpy as np
import pytest

from r3jax import sharding
from r3jax.data import pipeline, tasks, world_tfds
from r3jax.run import world_setup


@pytest.fixture(scope="module")
def world():
  from conftest import tiny_config
  return world_setup.load(tiny_config())


def test_sequence_layout_and_loss_mask(world):
  tok = world.tokenizer
  out = tasks.format_sequence(tok, "vqa", "is there a red circle ?", "yes", 12)
  q = tok.encode("is there a red circle ?")
  full = [tok.task_id("vqa"), *q, tok.sep_id, tok.encode("yes")[0], tok.eos_id]
  n = len(full) - 1
  np.testing.assert_array_equal(out["tokens"][:n], full[:-1])
  np.testing.assert_array_equal(out["targets"][:n], full[1:])
  assert (out["tokens"][n:] == tok.pad_id).all()
  # Supervised: the answer word (predicted at <sep>) and <eos>; nothing else.
  expected = np.zeros(12, np.float32)
  expected[len(q) + 1:len(q) + 3] = 1
  np.testing.assert_array_equal(out["loss_mask"], expected)
  assert tok.decode(out["targets"][out["loss_mask"] > 0].tolist()) == "yes"
  prompt, n_prompt = tasks.format_prompt(tok, "vqa", "is there a red circle ?", 12)
  np.testing.assert_array_equal(prompt[:n_prompt], full[:len(q) + 2])


def test_too_long_sequence_names_the_config_key(world):
  with pytest.raises(ValueError, match=r"config.tasks.caption.max_len is 4"):
    tasks.format_sequence(world.tokenizer, "caption", None,
                          "there is a small red circle", 4)


def test_process_shards_assemble_the_single_process_batch(world):
  """Each of 4 processes reads only its rows; together they are the global batch."""
  args = (world.train_source, world.tokenizer, "caption", 40, 8, 0)
  single = pipeline.task_dataset(*args)
  for k in (0, 1, 9):  # batch 9 is in the second epoch (64 examples)
    parts = [pipeline.task_dataset(*args, process_index=p, process_count=4)[k]
             for p in range(4)]
    for key, value in single[k].items():
      np.testing.assert_array_equal(value, np.concatenate([x[key] for x in parts]))
  # New epoch, new order; same seed, same stream.
  assert not np.array_equal(single[0]["image"], single[8]["image"])
  np.testing.assert_array_equal(single[3]["tokens"],
                                pipeline.task_dataset(*args)[3]["tokens"])


def test_per_image_rows_share_their_image_and_split_over_processes(world):
  """per_image=3: a batch of 6 questions holds 2 images, rows 3i..3i+2 ask
  about image i's record; processes read whole images."""
  tok = world.tokenizer
  args = (world.train_source, tok, "vqa", 20, 6, 0)
  single = pipeline.task_dataset(*args, per_image=3)
  records = [world.train_source[i] for i in range(len(world.train_source))]
  for k in (0, 5):
    b = single[k]
    assert b["image"].shape[0] == 2 and b["tokens"].shape == (6, 20)
    for i, image in enumerate(b["image"]):
      record = next(r for r in records if (r["image"] == image).all())
      for row in range(3 * i, 3 * i + 3):
        ids = b["tokens"][row].tolist()
        question = tok.decode(ids[1:ids.index(tok.sep_id)])
        assert question in list(record["vqa_questions"])
    parts = [pipeline.task_dataset(*args, process_index=p, process_count=2,
                                   per_image=3)[k] for p in range(2)]
    for key, value in b.items():
      np.testing.assert_array_equal(value, np.concatenate([x[key] for x in parts]))
  with pytest.raises(ValueError, match="per_image=4 must be >= 1 and divide"):
    pipeline.task_dataset(*args, per_image=4)
  with pytest.raises(ValueError, match="3 images per batch .* 2 processes"):
    pipeline.task_dataset(world.train_source, tok, "vqa", 20, 6, 0,
                          process_count=2, per_image=2)


def test_type_weights_draw_questions_in_proportion(world):
  """config.tasks.vqa.type_weights: a record's relation question is drawn 4
  times as often as each other type's; a weight of 0 never draws it."""
  tok = world.tokenizer
  record = next(r for r in (world.train_source[i] for i in range(
      len(world.train_source))) if "relation" in list(r["vqa_types"]))
  types = list(record["vqa_types"])

  def drawn(weights, n=3000):
    fmt = tasks.formatter("vqa", tok, 20, type_weights=weights)
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(types, 0)
    for _ in range(n):
      ids = fmt(record, rng)["tokens"].tolist()
      question = tok.decode(ids[1:ids.index(tok.sep_id)])
      counts[types[list(record["vqa_questions"]).index(question)]] += 1
    return counts, n

  counts, n = drawn({"relation": 4.0})
  want = 4 * types.count("relation") / (len(types) + 3 * types.count("relation"))
  assert abs(counts["relation"] / n - want) < 0.03, (counts, want)
  counts, n = drawn({"relation": 0.0})
  assert counts["relation"] == 0 and sum(counts.values()) == n
  with pytest.raises(ValueError, match="ita task's items have no types"):
    tasks.formatter("ita", tok, 44, type_weights={"relation": 2.0})


def _relation_questions(world):
  """(scene, question, answer) of every relation question of the training
  split."""
  from r3jax.world import scene_from_arrays
  for i in range(len(world.train_source)):
    r = world.train_source[i]
    scene = scene_from_arrays(r["scene"], world.world)
    for t, q, a in zip(r["vqa_types"], r["vqa_questions"], r["vqa_answers"]):
      if t == "relation":
        yield scene, q, a


def _drawn(fmt, tok, record, rng):
  """One formatted VQA example of `record`: its question, its supervised
  target text, and the question's index in the record."""
  out = fmt(record, rng)
  ids = out["tokens"].tolist()
  question = tok.decode(ids[1:ids.index(tok.sep_id)])
  target = tok.decode([t for t, m in zip(out["targets"].tolist(),
                                         out["loss_mask"]) if m])
  return question, target, list(record["vqa_questions"]).index(question)


def test_canonical_relation_questions_keep_their_answers(world):
  """config.data.relation_questions="canonical": every relation question is
  asked as "is A left of B ?" and its answer, checked on the scene, stays."""
  from r3jax.world.facts import holds, resolve
  from r3jax.world.verify import parse_ref
  cfg, tok = world.world, world.tokenizer
  seen = set()
  for scene, q, a in _relation_questions(world):
    c = tasks.canonical_relation(q)
    words = c.split()
    assert not {"right", "below", "to"} & set(words)
    rel = "left" if "left" in words else "above"
    k = words.index(rel)
    ia = resolve(parse_ref(words[1:k], cfg), scene)
    ib = resolve(parse_ref(words[k + (2 if rel == "left" else 1):-1], cfg),
                 scene)
    assert ("yes" if holds(scene, ia, rel, ib) else "no") == a, (q, c)
    seen.add(" ".join(w for w in q.split()
                      if w in ("to", "left", "right", "above", "below")))
  assert len(seen) == 6  # every phrasing met
  fmt = tasks.formatter("vqa", tok, 20, {"relation_questions": "canonical"})
  r = next(world.train_source[i] for i in range(len(world.train_source))
           if "relation" in list(world.train_source[i]["vqa_types"]))
  rng = np.random.default_rng(0)
  for _ in range(40):
    ids = fmt(r, rng)["tokens"].tolist()
    question = tok.decode(ids[1:ids.index(tok.sep_id)]).split()
    assert not {"right", "below"} & set(question)


def test_relation_trace_reads_the_answer_off_the_grid(world):
  """config.data.relation_answers="trace": a relation target is A's and B's
  grid indices, then the answer; the indices and the relation words alone
  give the answer, for every phrasing and its canonical form, and the
  formatter trains exactly that target (other types keep one word)."""
  from r3jax.world import scene_from_arrays
  from r3jax.world.config import NUMBERS
  from r3jax.world.vqa import relation_operands, relation_trace
  cfg, tok = world.world, world.tokenizer
  n = 0
  for scene, q, a in _relation_questions(world):
    for asked in (q, tasks.canonical_relation(q)):
      ia, ib = (NUMBERS.index(w) for w in
                relation_trace(asked, scene, cfg).split())
      _, _, swap, _ = relation_operands(asked, cfg)
      assert ("yes" if (ia > ib if swap else ia < ib) else "no") == a, (
          asked, a)
      n += 1
  assert n >= 60  # 37 questions, each as drawn and canonical
  fmt = tasks.formatter("vqa", tok, 20, {"relation_answers": "trace",
                                         "world": cfg})
  r = next(world.train_source[i] for i in range(len(world.train_source))
           if "relation" in list(world.train_source[i]["vqa_types"]))
  scene = scene_from_arrays(r["scene"], cfg)
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(60):
    question, target, k = _drawn(fmt, tok, r, rng)
    qtype, answer = r["vqa_types"][k], r["vqa_answers"][k]
    want = (f"{relation_trace(question, scene, cfg)} {answer}"
            if qtype == "relation" else answer)
    assert target == want
    seen.add(qtype)
  assert "relation" in seen and len(seen) > 1
  with pytest.raises(ValueError, match="needs the world's settings"):
    tasks.relation_trace("is the circle left of the square ?", r, None)
  # "restate": each index after its object's description, as asked.
  for other, q, a in _relation_questions(world):
    words = relation_trace(q, other, cfg, restate=True).split()
    ia, ib = relation_trace(q, other, cfg).split()
    k = words.index(ia)
    assert " ".join(words[:k]) + " " in q and words[-1] == ib
    assert q.startswith("is " + " ".join(words[:k]) + " ")
    assert q.endswith(" " + " ".join(words[k + 1:-1]) + " ?")
  fmt = tasks.formatter("vqa", tok, 32, {"relation_answers": "restate",
                                         "world": cfg})
  for _ in range(30):
    question, target, k = _drawn(fmt, tok, r, rng)
    if r["vqa_types"][k] == "relation":
      assert target == (f"{relation_trace(question, scene, cfg, True)} "
                        f"{r['vqa_answers'][k]}")


def test_position_questions_name_one_object_and_its_cell(world):
  """config.data.position_questions: a share of VQA draws asks for one
  object's grid column and row by a description that names only it."""
  from r3jax.world import scene_from_arrays
  from r3jax.world.config import NUMBERS
  from r3jax.world.facts import resolve
  from r3jax.world.verify import parse_ref
  from r3jax.world.vqa import grid_index, position_questions
  cfg, tok = world.world, world.tokenizer
  r = world.train_source[0]
  scene = scene_from_arrays(r["scene"], cfg)
  asked = position_questions(scene, cfg)
  assert {a for _, a in asked} == {
      f"{NUMBERS[int(o.x * cfg.grid)]} {NUMBERS[int(o.y * cfg.grid)]}"
      for o in scene.objects if any(
          resolve(parse_ref(q[:-2].split(), cfg), scene) ==
          scene.objects.index(o) for q, _ in asked)}
  for q, a in asked:
    i = resolve(parse_ref(q.split()[:-1], cfg), scene)
    o = scene.objects[i]
    assert a == (f"{NUMBERS[grid_index(o, 'left', cfg)]} "
                 f"{NUMBERS[grid_index(o, 'above', cfg)]}")
  rng = np.random.default_rng(0)
  for share, want in ((1.0, 40), (0.0, 0)):
    fmt = tasks.formatter("vqa", tok, 20, {"position_questions": share,
                                           "world": cfg})
    got = 0
    for _ in range(40):
      ids = fmt(r, rng)["tokens"].tolist()
      got += tok.decode(ids[1:ids.index(tok.sep_id)]) in dict(asked)
    assert got == want


def test_caption_positions_follow_each_single_object_and_strip_off(world):
  """config.data.caption_positions: the caption task trains each single
  object of the listing followed by its grid column and row; stripping the
  indices gives back the reference, and the scorer measures them."""
  from r3jax.world import scene_from_arrays
  from r3jax.world.config import NUMBERS
  from r3jax.world.facts import Ref, resolve
  from r3jax.world.vqa import (caption_positions, grid_index,
                               positions_right, strip_positions)
  cfg, tok = world.world, world.tokenizer
  seen = 0
  for r in (world.train_source[i] for i in range(30)):
    scene = scene_from_arrays(r["scene"], cfg)
    for c in r["captions"]:
      p = caption_positions(c, scene, cfg)
      assert strip_positions(p, cfg) == strip_positions(c, cfg) == c
      right, written = positions_right(p, scene, cfg)
      assert right == written
      words = p.split()
      for k, w in enumerate(words[:-2]):
        if w in ("a", "an") and words[k + 3] in cfg.shapes:
          i = resolve(Ref(*words[k + 1:k + 4]), scene)
          assert words[k + 4:k + 6] == [
              NUMBERS[grid_index(scene.objects[i], "left", cfg)],
              NUMBERS[grid_index(scene.objects[i], "above", cfg)]]
          seen += 1
  assert seen >= 30
  # A wrong index is counted wrong; one object with a wrong cell.
  r = world.train_source[0]
  scene = scene_from_arrays(r["scene"], cfg)
  words = caption_positions(r["captions"][0], scene, cfg).split()
  k = next(k for k, w in enumerate(words) if w in cfg.shapes) + 1
  words[k] = NUMBERS[(NUMBERS.index(words[k]) + 1) % cfg.grid]
  right, written = positions_right(" ".join(words), scene, cfg)
  assert (right, written) == (written - 1, written) and written >= 1
  rng = np.random.default_rng(0)
  for on in (True, False):
    fmt = tasks.formatter("caption", tok, 48, {"caption_positions": on,
                                               "world": cfg})
    ex = fmt(r, rng)
    ids = ex["targets"][ex["loss_mask"] > 0].tolist()
    assert ids[-1] == tok.eos_id
    text = tok.decode(ids[:-1])
    assert (text == caption_positions(strip_positions(text, cfg), scene, cfg)
            if on else text in r["captions"])
    assert strip_positions(text, cfg) in r["captions"]
  # The scorer scores the captions without the indices, and the indices.
  records = [world.train_source[i] for i in range(8)]
  items = [(i, None, rr["captions"], {}) for i, rr in enumerate(records)]
  score = world_setup.make_caption_scorer(cfg, positions=True)
  preds = [caption_positions(rr["captions"][0], scene_from_arrays(
      rr["scene"], cfg), cfg) for rr in records]
  got = score("caption", preds, items, records)
  assert got["f1"] == got["v_strict"] == got["positions/accuracy"] == 1.0
  plain = world_setup.make_caption_scorer(cfg)("caption", preds, items,
                                               records)
  assert plain["f1"] < 1.0 and "positions/accuracy" not in plain


def test_caption_trace_writes_each_relations_indices_before_its_words(world):
  """config.data.caption_trace: each relation phrase of a caption follows
  its subject's and object's grid indices on its axis, which order the two
  as the phrase says; stripping gives back the reference, a wrong index is
  counted wrong, and the formatter and the scorer use both formats."""
  from r3jax.world import scene_from_arrays
  from r3jax.world.config import NUMBERS
  from r3jax.world.facts import Relation
  from r3jax.world.language import REL_WORDS
  from r3jax.world.verify import parse_clauses
  from r3jax.world.vqa import (caption_positions, caption_trace,
                               strip_positions, trace_right)
  cfg, tok = world.world, world.tokenizer
  seen = 0
  for r in (world.train_source[i] for i in range(40)):
    scene = scene_from_arrays(r["scene"], cfg)
    for c in r["captions"]:
      t = caption_trace(c, scene, cfg)
      assert strip_positions(t, cfg) == c
      assert strip_positions(caption_positions(t, scene, cfg), cfg) == c
      n = sum(isinstance(f, Relation) for f in parse_clauses(c, cfg))
      assert trace_right(t, scene, cfg) == (n, n)
      words = t.split()
      for k in range(2, len(words)):
        phrase = next((p for p in REL_WORDS if tuple(words[k:k + len(p)])
                       == p), None)
        if phrase is None:
          continue
        a, b = (NUMBERS.index(w) for w in words[k - 2:k])
        swapped = REL_WORDS[phrase][1]  # "right of", "below"
        assert (a > b) if swapped else (a < b), t
        seen += 1
  assert seen >= 30
  r = next(r for r in (world.train_source[i] for i in range(40))
           if " of " in r["captions"][0])
  scene = scene_from_arrays(r["scene"], cfg)
  words = caption_trace(r["captions"][0], scene, cfg).split()
  k = words.index("of") - 2  # the object's index before "left/right of"
  words[k] = NUMBERS[(NUMBERS.index(words[k]) + 1) % cfg.grid]
  right, n = trace_right(" ".join(words), scene, cfg)
  assert (right, n) == (n - 1, n) and n >= 1
  fmt = tasks.formatter("caption", tok, 56, {"caption_positions": True,
                                             "caption_trace": True,
                                             "world": cfg})
  ex = fmt(r, np.random.default_rng(0))
  ids = ex["targets"][ex["loss_mask"] > 0].tolist()
  text = tok.decode(ids[:-1])
  assert text == caption_positions(caption_trace(
      strip_positions(text, cfg), scene, cfg), scene, cfg)
  assert strip_positions(text, cfg) in r["captions"]
  records = [world.train_source[i] for i in range(8)]
  items = [(i, None, rr["captions"], {}) for i, rr in enumerate(records)]
  preds = [caption_trace(rr["captions"][0], scene_from_arrays(
      rr["scene"], cfg), cfg) for rr in records]
  got = world_setup.make_caption_scorer(cfg, trace=True)(
      "caption", preds, items, records)
  assert got["f1"] == got["v_strict"] == got["trace/accuracy"] == 1.0
  assert "positions/accuracy" not in got


def test_trace_scorer_takes_the_last_word_and_scores_the_indices(world):
  from r3jax.world import scene_from_arrays
  from r3jax.world.vqa import relation_trace
  cfg = world.world
  records = [world.train_source[i] for i in range(40)]
  items = [(i, q, a, {"qtype": t}) for i, r in enumerate(records)
           for q, a, t in zip(r["vqa_questions"], r["vqa_answers"],
                              r["vqa_types"])]
  rel = [k for k, it in enumerate(items) if it[3]["qtype"] == "relation"]
  assert len(rel) >= 4
  flip = {"yes": "no", "no": "yes"}
  preds = []
  for k, (i, q, a, e) in enumerate(items):
    if e["qtype"] != "relation":
      preds.append(a)
      continue
    trace = relation_trace(q, scene_from_arrays(records[i]["scene"], cfg),
                           cfg)
    j = rel.index(k)
    if j == 0:  # right indices, wrong answer
      preds.append(f"{trace} {flip[a]}")
    elif j == 1:  # wrong indices, right answer
      preds.append(f"{' '.join(reversed(trace.split()))} {a}")
    elif j == 2:  # no indices
      preds.append(a)
    else:
      preds.append(f"{trace} {a}")
  got = world_setup.make_vqa_scorer(cfg, "trace")("vqa", preds, items,
                                                  records)
  n = len(rel)
  assert got["qtype/relation/accuracy"] == pytest.approx((n - 1) / n)
  assert got["trace/accuracy"] == pytest.approx((n - 2) / n)
  # item 1 swapped both indices; item 2 wrote none
  assert got["trace/a"] == got["trace/b"] == pytest.approx((n - 2) / n)
  # item 0's answer contradicts its indices, item 1's follows from them
  # (swapped indices give the flipped answer, not the one it wrote), and
  # item 2 wrote no indices
  assert got["trace/consistent"] == pytest.approx((n - 3) / n)
  for k in ("accuracy", "a", "b", "consistent"):
    assert got[f"qtype/relation/trace/{k}"] == got[f"trace/{k}"]
  assert got["trace/count"] == n
  for t in ("color", "count", "existence"):
    assert got[f"qtype/{t}/accuracy"] == 1.0
  # "restate": the same items with each index after its description
  restated = []
  for p, (i, q, a, e) in zip(preds, items):
    words = p.split()
    if e["qtype"] == "relation" and len(words) == 3:
      scene = scene_from_arrays(records[i]["scene"], cfg)
      full = relation_trace(q, scene, cfg, restate=True).split()
      k = [j for j, w in enumerate(full) if w == relation_trace(
          q, scene, cfg).split()[0]][0]
      full[k], full[-1] = words[0], words[1]
      p = " ".join([*full, words[2]])
    restated.append(p)
  again = world_setup.make_vqa_scorer(cfg, "restate")("vqa", restated, items,
                                                      records)
  for k in ("qtype/relation/accuracy", "trace/accuracy", "trace/a",
            "trace/b", "trace/consistent"):
    assert again[k] == pytest.approx(got[k]), k
  plain = world_setup.make_vqa_scorer(cfg, "word")("vqa", preds, items,
                                                   records)
  assert plain["qtype/relation/accuracy"] == pytest.approx(1 / n)
  assert "trace/accuracy" not in plain


def test_relation_answers_are_checked_by_the_config(tiny):
  from r3jax import config as config_lib
  c = tiny()
  c.data.relation_answers = "chain"
  with pytest.raises(ValueError, match=r"relation_answers must be one of "
                     r"\('word', 'trace', 'restate'\), got 'chain'"):
    config_lib.validate(c)
  c = tiny()
  c.data.relation_answers = "trace"
  config_lib.validate(c)
  c.world.grid = 5
  with pytest.raises(ValueError, match=r"grid indices as number words up to "
                     r"4, .* use config.world.grid <= 4 or "
                     r"config.world.number_words >= 4"):
    config_lib.validate(c)
  c.world.number_words = 4
  config_lib.validate(c)
  c.world.number_words = 2
  with pytest.raises(ValueError, match=r"number_words=2 must be 0 "
                     r"\(max_objects\) or in \[max_objects=3, 10\]"):
    config_lib.validate(c)
  c = tiny()
  c.data.position_questions = 1.5
  with pytest.raises(ValueError, match=r"position_questions must be in "
                     r"\[0, 1\]"):
    config_lib.validate(c)
  c = tiny()
  c.data.caption_positions = True
  config_lib.validate(c)
  for key in ("caption_positions", "caption_trace"):
    c = tiny(("caption", "reflect", "refine"))
    c.data[key] = True
    with pytest.raises(ValueError, match=rf"{key} writes grid "
                       r"indices .*source='world' and no R3 task"):
      config_lib.validate(c)


def test_type_weights_are_checked_by_the_config(tiny):
  from r3jax import config as config_lib
  c = tiny()
  c.tasks.vqa.type_weights = {"relations": 2.0}
  with pytest.raises(ValueError, match="unknown type 'relations' in "
                     r"config.tasks.vqa.type_weights; known: \['existence'"):
    config_lib.validate(c)
  c.tasks.vqa.type_weights = {"relation": -1.0}
  with pytest.raises(ValueError, match="type_weights.relation=-1.0 must be"):
    config_lib.validate(c)
  c = tiny()
  c.tasks.caption.type_weights = {"relation": 2.0}
  with pytest.raises(ValueError, match="caption task's items have no types"):
    config_lib.validate(c)
  c = tiny()
  c.tasks.vqa.type_weights = {"relation": 3}
  config_lib.validate(c)


def test_train_data_state_round_trip(world, tiny):
  c = tiny()
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  data = pipeline.TrainData(world.train_source, world.tokenizer, c.tasks, 0, mesh)
  next(data)
  state = data.get_state()
  a = jax.device_get(next(data))
  b = jax.device_get(next(data))
  data.set_state(state)
  for want in (a, b):
    got = jax.device_get(next(data))
    for t in want:
      for k in want[t]:
        np.testing.assert_array_equal(want[t][k], got[t][k])
  batch = next(data)
  assert batch["vqa"]["tokens"].sharding.spec == jax.sharding.PartitionSpec(
      ("data", "fsdp"))
  with pytest.raises(ValueError, match="data state has tasks"):
    data.set_state({"caption": state["caption"]})


def test_records_match_the_world_generator(world):
  from r3jax.world import generate_example
  source = world_tfds.data_source(world.builder, "validation")
  ex = generate_example(world.world, world_tfds.split_seed(0, "validation"), 3)
  np.testing.assert_array_equal(source[3]["image"], ex["image"])
  assert source[3]["captions"] == list(ex["captions"])
