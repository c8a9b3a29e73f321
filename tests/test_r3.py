"""R3 training sequences and the reflect/refine consistency loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax import config as config_lib
from r3jax.data import tasks as tasks_lib
from r3jax.r3 import consistency
from r3jax.r3 import data as r3_data
from r3jax.run import world_setup
from r3jax.world import CORRUPTIONS, edit, scene_from_arrays, verify


@pytest.fixture(scope="module")
def world():
  from conftest import tiny_config
  return world_setup.load(tiny_config(("caption", "reflect", "refine",
                                       "refine_direct")))


def _words(tok, ids):
  return " ".join(tok.tokens[i] for i in ids)


def _parts(tok, out):
  """(prompt, trained text) of one formatted sequence."""
  n = int((out["tokens"] != tok.pad_id).sum())
  full = list(out["tokens"][:n]) + [out["targets"][n - 1]]
  trained = [t for t, m in zip(out["targets"], out["loss_mask"]) if m]
  return _words(tok, full), _words(tok, trained)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_targets_come_from_the_verifier_diff(world, kind):
  tok, cfg = world.tokenizer, world.world
  opts = world.config.r3.copy_and_resolve_references()
  opts.corruptions, opts.p_stop = [kind], 0.0
  fmts = {n: tasks_lib.formatter(n, tok, world.config.tasks[n].max_len,
                                 {"world": cfg, "r3": opts})
          for n in ("reflect", "refine", "refine_direct")}
  checked = 0
  for i in range(40):
    record = world.train_source[i]
    scene = scene_from_arrays(record["scene"], cfg)
    for name, fmt in fmts.items():
      seed = np.random.default_rng([i, len(name)])
      out = fmt(record, seed)
      full, trained = _parts(tok, out)
      draft = full.split(" <sep> ")[0].split(" ", 1)[1]
      if draft in record["captions"]:
        continue  # this scene has no corruption of this kind
      checked += 1
      fixed = edit.apply(edit.diagnose(draft, scene, cfg), draft, scene, cfg)
      if name == "reflect":
        assert full.startswith("<reflect> ") and trained.endswith(" <sep>")
        reflection = trained[:-len(" <sep>")]
        assert reflection.endswith(edit.instruction(draft, scene, cfg))
        # Self-questions are answered truthfully from the scene.
        for qa in reflection.split(" . ")[:-1]:
          q, a = qa.rsplit(" ? ", 1)
          assert a in {"zero", "one", "two", "three"} | set(cfg.colors)
        assert len(reflection.split(" . ")) - 1 <= opts.self_questions
      else:
        assert trained == fixed + " <eos>"
        assert verify(fixed, scene, cfg).f1 > verify(draft, scene, cfg).f1
        assert full.startswith("<refine> " if name == "refine_direct"
                               else "<reflect> ")
  assert checked >= 10


def test_correct_drafts_teach_the_stop_string(world):
  tok = world.tokenizer
  opts = world.config.r3.copy_and_resolve_references()
  opts.p_stop = 1.0
  fmt = tasks_lib.formatter("reflect", tok, 96,
                            {"world": world.world, "r3": opts})
  for i in range(10):
    _, trained = _parts(tok, fmt(world.train_source[i], np.random.default_rng(i)))
    assert trained.endswith(edit.STOP + " <eos>")


@pytest.mark.parametrize("self_questions", [0, 2])
def test_consistency_pairs_point_at_reflection_and_caption_words(
    world, self_questions):
  """Each pair links a word the reflection commits to (a self-question's
  answer, or a word of the instruction's new item) to the caption word of
  REFINED stating the same answer."""
  tok = world.tokenizer
  opts = world.config.r3.copy_and_resolve_references()
  opts.self_questions = self_questions
  fmt = tasks_lib.formatter("refine", tok, 144,
                            {"world": world.world, "r3": opts})
  pairs = 0
  for i in range(30):
    out = fmt(world.train_source[i], np.random.default_rng(i))
    assert out["cons_src"].shape == (self_questions + r3_data.PHRASE_WORDS,)
    for q in np.flatnonzero(out["cons_weight"]):
      said = out["targets"][out["cons_src"][q]]
      word = out["targets"][out["cons_dst"][q]]
      k = [a for a in range(out["cons_src_ids"].shape[1])
           if said in out["cons_src_ids"][q, a]]
      assert len(k) == 1 and word in out["cons_dst_ids"][q, k[0]]
      assert out["loss_mask"][out["cons_dst"][q]] == 1  # inside REFINED
      assert out["loss_mask"][out["cons_src"][q]] == 0  # reflection is context
      pairs += 1
  assert pairs >= 30


def _cons_batch(v=8):
  # One row, two questions; answers are ids 1..3 at position 0, and the
  # caption words at position 1 (answer 0 can also be written as id 4).
  return {"cons_src": jnp.array([[0, 0]]), "cons_dst": jnp.array([[1, 1]]),
          "cons_src_ids": jnp.array([[[1, 2, 3], [1, 2, -1]]]),
          "cons_dst_ids": jnp.array([[[[1, 4], [2, -1], [3, -1]],
                                      [[1, -1], [2, -1], [-1, -1]]]]),
          "cons_weight": jnp.array([[1.0, 0.5]])}


def _logits(src_probs, dst_probs, v=8):
  out = np.full((1, 2, v), -1e4, np.float32)
  for pos, probs in ((0, src_probs), (1, dst_probs)):
    for i, p in probs.items():
      out[0, pos, i] = np.log(p)
  return jnp.asarray(out)


def test_consistency_is_zero_when_stages_agree_and_grows_with_disagreement():
  b = _cons_batch()
  agree = _logits({1: 0.2, 2: 0.5, 3: 0.3}, {1: 0.1, 4: 0.1, 2: 0.5, 3: 0.3})
  np.testing.assert_allclose(consistency.kl_terms(agree, b)[0, 0], 0, atol=1e-6)
  kls = []
  for p in (0.5, 0.3, 0.1, 0.01):
    dst = _logits({1: 0.2, 2: 0.5, 3: 0.3}, {1: (1 - p) / 2, 2: p,
                                            3: (1 - p) / 2})
    kls.append(float(consistency.loss_sum(dst, b)))
  assert all(a < c for a, c in zip(kls, kls[1:])) and kls[0] > 0
  # Hand-computed: KL(p || r) with p = (.2,.5,.3), r = (.2,.6,.2) on q0.
  dst = _logits({1: 0.2, 2: 0.5, 3: 0.3}, {1: 0.2, 2: 0.6, 3: 0.2})
  expected = 0.2 * 0 + 0.5 * np.log(0.5 / 0.6) + 0.3 * np.log(0.3 / 0.2)
  np.testing.assert_allclose(consistency.kl_terms(dst, b)[0, 0], expected,
                             rtol=1e-5)
  # q1 restricts both sides to answers 1, 2: p = (2/7, 5/7), r = (.25, .75).
  expected = (2 / 7) * np.log((2 / 7) / 0.25) + (5 / 7) * np.log((5 / 7) / 0.75)
  np.testing.assert_allclose(consistency.kl_terms(dst, b)[0, 1], expected,
                             atol=1e-6)
  zero = dict(b, cons_weight=jnp.zeros((1, 2)))
  assert float(consistency.loss_sum(dst, zero)) == 0.0


def test_consistency_gradient_stops_at_the_reflect_side():
  b = _cons_batch()
  logits = _logits({1: 0.2, 2: 0.5, 3: 0.3}, {1: 0.6, 2: 0.2, 3: 0.2})
  g = jax.grad(lambda x: consistency.loss_sum(x, b))(logits)
  assert float(jnp.abs(g[0, 0]).max()) == 0.0  # reflect answer logits
  assert float(jnp.abs(g[0, 1]).max()) > 1e-3  # refine caption-word logits


def test_r3_settings_are_checked():
  from conftest import tiny_config
  c = tiny_config(("caption", "refine"))
  config_lib.validate(c)
  c.r3.corruptions = ["colour"]
  with pytest.raises(ValueError, match=r"unknown \['colour'\]"):
    config_lib.validate(c)
  c = tiny_config(("vqa", "refine"))
  with pytest.raises(ValueError, match="add the caption task"):
    config_lib.validate(c)
  assert r3_data.num_answers(world_setup.world_config(c)) == 4


def test_on_policy_drafts_keep_the_batch_structure(world, tmp_path):
  """The model's own draft replaces the corrupted reference for selected
  examples; a right draft still teaches reflect to stop, while refine then
  falls back to a corrupted draft, so every example has the same arrays."""
  from r3jax.r3.drafts import DraftStore
  tok, cfg = world.tokenizer, world.world
  store = DraftStore(str(tmp_path), every=1, frac=1.0, margin=0,
                     batch_sizes={"reflect": 1, "refine": 1}, seed=0)
  record = world.train_source[0]
  right = str(record["captions"][0])
  store.put(1, {"reflect": {1: right}, "refine": {1: right}})
  ctx = {"world": cfg, "r3": world.config.r3, "drafts": store}
  for task in ("reflect", "refine"):
    fmt = tasks_lib.formatter(task, tok, world.config.tasks[task].max_len, ctx)
    plain = fmt(record, np.random.default_rng(0), 0)  # window 0: no draft
    mine = fmt(record, np.random.default_rng(0), 1)
    assert {k: v.shape for k, v in plain.items()} == {
        k: v.shape for k, v in mine.items()}
    full, trained = _parts(tok, mine)
    if task == "reflect":
      assert full.startswith(f"<reflect> {right} <sep>")
      assert trained == edit.STOP + " <eos>"
    else:
      assert not full.startswith(f"<reflect> {right} <sep>")


def test_refine_learns_to_carry_out_the_models_own_reflection(world, tmp_path):
  """With the model's reflection stored beside its draft, refine is trained
  on that reflection (context) and the draft after the edit it names; a
  reflection naming no edit of the draft falls back to the verifier's."""
  from r3jax.r3.drafts import DraftStore
  from r3jax.world import available_corruptions, corrupt
  tok, cfg = world.tokenizer, world.world
  source = world.train_source
  for i in range(len(source)):  # a draft listing two items or more
    record = source[i]
    scene = scene_from_arrays(record["scene"], cfg)
    if "color" not in available_corruptions(scene, cfg):
      continue
    bad = corrupt(scene, np.random.default_rng(0), cfg, "color")
    if len(edit.read(bad, cfg)[0].items) >= 2:
      break
  else:
    raise AssertionError("no training scene with two kinds")
  verifier = edit.diagnose(bad, scene, cfg)
  assert verifier is not None
  # The model's reflection: self-questions, then an instruction that differs
  # from the verifier's: remove the first item it names.
  first = edit.read(bad, cfg)[0].items[0].text
  questions = r3_data.self_questions(bad, scene, cfg,
                                     np.random.default_rng(1), 1)
  own = r3_data.reflection(questions, f"remove {first}")
  named = edit.from_instruction(f"remove {first}", bad, cfg)
  want = edit.apply(named, bad, scene, cfg)
  store = DraftStore(str(tmp_path), every=1, frac=1.0, margin=0,
                     batch_sizes={"refine": 1}, seed=0)
  nothing = r3_data.reflection(questions, "remove a large purple blob")
  store.put(1, {"refine": {1: [bad, own]}})  # window of stream index 1
  store.put(2, {"refine": {2: [bad, nothing]}})
  ctx = {"world": cfg, "r3": world.config.r3, "drafts": store}
  fmt = tasks_lib.formatter("refine", tok, world.config.tasks["refine"].max_len,
                            ctx)
  full, trained = _parts(tok, fmt(record, np.random.default_rng(0), 1))
  assert full == f"<reflect> {bad} <sep> {own} <sep> {want} <eos>"
  assert trained == f"{want} <eos>"
  # Not an edit of this draft: the verifier's instruction and target.
  full, trained = _parts(tok, fmt(record, np.random.default_rng(0), 2))
  assert "purple" not in full and verifier.instruction in full
  assert trained == edit.apply(verifier, bad, scene, cfg) + " <eos>"
