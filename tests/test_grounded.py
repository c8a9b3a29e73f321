"""The grounded consistency loss: VQA answers teach the caption's words."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.data import pipeline
from r3jax.data import tasks as tasks_lib
from r3jax.r3 import grounded
from r3jax.r3.drafts import DraftStore
from r3jax.run import world_setup
from r3jax.train import losses
from r3jax.world import WorldConfig, scene_from_arrays
from r3jax.world.scene import Object, Scene

CFG = WorldConfig()
CAPTION = ("there are three objects : a small red circle and two large blue "
           "squares . the circle is to the right of the large blue square "
           "and left of the square")


@pytest.fixture(scope="module")
def world():
  from conftest import tiny_config
  return world_setup.load(tiny_config(("caption", "vqa", "ground")))


def test_slots_name_each_checkable_fact_and_its_question():
  words = CAPTION.split()
  got = [(s.kind, words[s.word], s.question, s.stated)
         for s in grounded.slots(CAPTION, CFG)]
  assert got == [  # the total ("three objects") has no VQA question
      ("count", "a", "how many small red circles are there ?", 0),
      ("size", "small", "what size is the red circle ?", 0),
      ("color", "red", "what color is the small circle ?", 0),
      ("shape", "circle", "what shape is the small red object ?", 0),
      ("count", "two", "how many large blue squares are there ?", 1),
      ("relation", "right", "is the circle left of the large blue square ?",
       1),
      ("relation", "left", "is the circle left of the square ?", 0)]
  # Text outside the grammar states nothing checkable.
  assert grounded.slots("a red circle is there", CFG) == []
  # Given the scene, only descriptions that name one object are asked, as
  # VQA asks them: with a small and a large red circle, "the red circle"
  # names neither, so their sizes are not asked (their colours and shapes
  # are); nor is a relation whose description names two objects.
  scene = Scene((Object("circle", "red", "small", 0.2, 0.2),
                 Object("circle", "red", "large", 0.8, 0.8)))
  caption = ("there are two objects : a small red circle and a large red "
             "circle . the red circle is left of the large circle")
  kinds = [s.kind for s in grounded.slots(caption, CFG, scene)]
  assert kinds == ["count", "color", "shape"] * 2
  assert "relation" in [s.kind for s in grounded.slots(caption, CFG)]
  assert [s.kind for s in grounded.slots(
      "there is a small red circle . the circle is above", CFG)] == [
          "count", "size", "color", "shape"]


def _batch(t_probs, s_probs, min_conf=0.0, vocab=6):
  """Logits of one image with a caption row and len(t_probs) question rows:
  question q's answer position gives answers 0..K-1 (word ids 1..K) the
  probabilities t_probs[q]; the caption's slot q gives s_probs[q]."""
  q = len(t_probs)
  k_ans = len(t_probs[0])
  length = q + 2
  logits = np.zeros((1 + q, length, vocab), np.float32)
  b = {"image": np.zeros((1, 4, 4, 3), np.uint8),
       "gnd_at": np.zeros(1 + q, np.int32), "gnd_slot": np.zeros(1 + q, np.int32),
       "gnd_t_ids": np.full((1 + q, k_ans, 3), -1, np.int32),
       "gnd_s_ids": np.full((1 + q, k_ans, 3), -1, np.int32),
       "gnd_weight": np.zeros(1 + q, np.float32),
       "gnd_min_conf": np.full(1 + q, min_conf, np.float32)}
  for i in range(q):
    r = i + 1
    b["gnd_at"][r], b["gnd_slot"][r], b["gnd_weight"][r] = 1, i, 1.0
    b["gnd_t_ids"][r, :, 0] = np.arange(1, k_ans + 1)
    b["gnd_s_ids"][r, :, 0] = np.arange(1, k_ans + 1)
    logits[r, 1, 1:k_ans + 1] = np.log(t_probs[i])
    logits[0, i, 1:k_ans + 1] = np.log(s_probs[i])
  return jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()}


def test_zero_when_caption_and_answer_agree():
  logits, b = _batch([[0.7, 0.2, 0.1], [0.5, 0.5, 1e-9]],
                     [[0.7, 0.2, 0.1], [0.5, 0.5, 1e-9]])
  kl, w, agree = grounded.terms(logits, b)
  np.testing.assert_allclose(kl, 0.0, atol=1e-6)
  assert list(w) == [1.0, 1.0] and float(agree[0]) == 1.0


def test_equal_to_hand_computed_values_and_monotone():
  t = [0.8, 0.2]
  logits, b = _batch([t], [[0.4, 0.6]])
  expected = 0.8 * np.log(0.8 / 0.4) + 0.2 * np.log(0.2 / 0.6)
  kl, _, agree = grounded.terms(logits, b)
  np.testing.assert_allclose(kl[0], expected, rtol=1e-5)
  assert float(agree[0]) == 0.0  # the caption prefers the other answer
  # The same through the task loss: the sum over slots, one slot counted.
  loss, _, n = losses.sub_batch_sums(logits, {
      **b, "targets": jnp.zeros((2, 3), jnp.int32),
      "loss_mask": jnp.zeros((2, 3))}, "ground")
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(n) == 1.0
  # Monotone in the disagreement: the caption moves away from the teacher.
  kls = [float(grounded.terms(*_batch([t], [[p, 1 - p]]))[0][0])
         for p in (0.8, 0.6, 0.4, 0.2, 0.05)]
  assert kls[0] < 1e-6 and all(a < b for a, b in zip(kls, kls[1:]))
  # Answers only one side states are left out and the rest renormalised:
  # the third answer has no caption word.
  logits, b = _batch([[0.4, 0.4, 0.2]], [[0.5, 0.5, 0.3]])
  b["gnd_s_ids"] = b["gnd_s_ids"].at[1, 2].set(-1)
  np.testing.assert_allclose(grounded.terms(logits, b)[0][0], 0.0, atol=1e-6)


def test_a_teacher_that_says_zero_is_not_confident():
  """A count teacher whose mass is on "zero" (an answer no caption word
  states) is renormalised over the stated answers for the KL, but the gate
  reads it over all its answers: the slot is left out."""
  logits, b = _batch([[0.02, 0.01, 0.97]], [[0.5, 0.5, 0.5]], min_conf=0.5)
  b["gnd_s_ids"] = b["gnd_s_ids"].at[1, 2].set(-1)  # "zero": no caption word
  kl, w, _ = grounded.terms(logits, b)
  assert float(w[0]) == 0.0
  expected = (2 / 3) * np.log((2 / 3) / 0.5) + (1 / 3) * np.log((1 / 3) / 0.5)
  np.testing.assert_allclose(kl[0], expected, rtol=1e-5)


def test_confidence_gate_leaves_unsure_slots_out():
  logits, b = _batch([[0.9, 0.1], [0.55, 0.45]], [[0.2, 0.8], [0.2, 0.8]],
                     min_conf=0.8)
  kl, w, _ = grounded.terms(logits, b)
  assert list(np.asarray(w)) == [1.0, 0.0] and float(kl[1]) > 0
  loss, _, n = grounded.sums(logits, b)
  np.testing.assert_allclose(loss, kl[0], rtol=1e-6)
  assert float(n) == 1.0


def test_no_gradient_into_the_teacher():
  logits, b = _batch([[0.8, 0.2], [0.3, 0.7]], [[0.5, 0.5], [0.9, 0.1]])
  g = jax.grad(lambda x: grounded.sums(x, b)[0])(logits)
  assert float(jnp.abs(g[1:]).max()) == 0.0  # the question rows
  assert float(jnp.abs(g[0]).max()) > 0.0    # the caption row learns


def test_ground_examples_ask_about_their_captions_slots(world, tmp_path):
  """Row 0 holds the caption (here the model's stored draft, or a refined
  caption in the refine format); each question row asks about one slot and
  gnd_slot points at the logits that predict that slot's word."""
  tok, cfg = world.tokenizer, world.world
  record = world.train_source[0]
  draft = str(record["captions"][0])
  refined = CAPTION
  store = DraftStore(str(tmp_path), every=1, frac=1.0, margin=0,
                     batch_sizes={"ground": 1}, seed=0)
  store.put(1, {"ground": {1: draft}})  # window w: stream index w here
  store.put(2, {"ground": {2: [draft, "add a small red circle", refined]}})
  rows = 7
  ctx = {"world": cfg, "r3": world.config.r3, "drafts": store, "rows": rows}
  fmt = tasks_lib.formatter("ground", tok, 160, ctx)
  for index, caption, lead in ((1, draft, "<caption> <sep>"),
                               (2, refined, f"<reflect> {draft} <sep> add a small "
                                "red circle <sep>")):
    out = fmt(record, np.random.default_rng(0), index)
    assert out["tokens"].shape == (rows, 160)
    assert float(out["loss_mask"].sum()) == 0.0
    row0 = " ".join(tok.tokens[i] for i in out["tokens"][0] if i != tok.pad_id)
    assert row0 == f"{lead} {caption}"
    found = grounded.slots(caption, cfg, scene_from_arrays(record["scene"],
                                                            cfg))
    used = int(out["gnd_weight"].sum())
    assert used == min(len(found), rows - 1) > 0
    asked = {s.question: s for s in found}
    for r in range(1, used + 1):
      ids = [i for i in out["tokens"][r] if i != tok.pad_id]
      assert ids[-1] == tok.sep_id and out["gnd_at"][r] == len(ids) - 1
      slot = asked[" ".join(tok.tokens[i] for i in ids[1:-1])]
      word = out["tokens"][0][out["gnd_slot"][r] + 1]
      assert tok.tokens[word] == caption.split()[slot.word]
      assert tok.tokens[word] in [
          w for words in slot.student for w in words]
  # Not selected (window 0): a reference caption, corrupted or not.
  plain = fmt(record, np.random.default_rng(0), 0)
  assert {k: v.shape for k, v in plain.items()} == {
      k: v.shape for k, v in out.items()}


def test_ground_batches_group_rows_by_image(world):
  """The pipeline keeps an image's caption and question rows together, and
  a training loss on them is finite with slots counted as its tokens."""
  tok = world.tokenizer
  t = world.config.tasks.ground
  ds = pipeline.task_dataset(world.train_source, tok, "ground", t.max_len,
                             t.batch_size, 0, context=world.task_context(),
                             per_image=t.per_image)
  b = ds[0]
  k = t.per_image
  assert b["image"].shape[0] * k == b["tokens"].shape[0] == t.batch_size
  assert (b["tokens"][::k, 0] == tok.task_id("caption")).all()
  questions = b["tokens"].reshape(-1, k, t.max_len)[:, 1:, 0]
  weights = b["gnd_weight"].reshape(-1, k)
  assert (questions[weights[:, 1:] > 0] == tok.task_id("vqa")).all()
  logits = jax.random.normal(jax.random.key(0), (t.batch_size, t.max_len,
                                                  len(tok.tokens)))
  batch = {k2: jnp.asarray(v) for k2, v in b.items()}
  loss, correct, n = losses.sub_batch_sums(logits, batch, "ground")
  assert float(n) == float(weights.sum()) > 0 and 0 <= float(correct) <= n
  assert np.isfinite(float(loss)) and float(loss) > 0
  # Each image's caption row is the student of its own question rows only:
  # changing the other images' logits leaves the first image's terms alone.
  other = logits.at[t.per_image:].multiply(3.0)
  q = t.per_image - 1
  kl_a, w_a, _ = grounded.terms(logits, batch)
  kl_b, _, _ = grounded.terms(other, batch)
  np.testing.assert_array_equal(kl_a[:q], kl_b[:q])
  used = np.asarray(w_a[q:]) > 0
  assert used.any() and not np.allclose(np.asarray(kl_a[q:])[used],
                                        np.asarray(kl_b[q:])[used])


def test_ground_settings_are_checked(tiny):
  from r3jax import config as config_lib
  c = tiny(("caption", "ground"))
  c.tasks.ground.per_image = 1
  with pytest.raises(ValueError, match="rows per image .* must be >= 2"):
    config_lib.validate(c)
  c = tiny(("caption", "ground"))
  c.r3.ground_min_conf = 1.5
  with pytest.raises(ValueError, match="ground_min_conf"):
    config_lib.validate(c)


def test_agreement_is_the_share_of_slots_the_answers_confirm(world):
  tok, cfg = world.tokenizer, world.world
  captions = ["there is a small red circle", "a red circle"]
  vocab = len(tok.tokens)

  def answer_fn(rows, questions):
    out = np.zeros((len(questions), vocab))
    for i, q in enumerate(questions):
      # Confirm everything but the colour (the VQA says "blue").
      word = {"how": "one", "what size": "small", "what color": "blue",
              "what shape": "circle"}[q.split()[0] if q.startswith("how")
                                      else " ".join(q.split()[:2])]
      out[i, tok.encode(word)[0]] = 5.0
    assert rows == [0, 0, 0, 0]
    return out

  got = grounded.agreement(answer_fn, tok, captions, cfg)
  # A caption with nothing checkable confirms nothing: 0.
  np.testing.assert_allclose(got, [0.75, 0.0])


def test_a_run_trains_on_its_own_drafts_and_refined_captions(tiny, tmp_path):
  """caption + VQA + R3 + ground through the instrumented step: from window
  1 (step 3 on) ground's captions are the model's own, in the refine format
  where its round edited; the loss and the slot agreement are logged."""
  from r3jax.run import loop
  c = tiny(("caption", "vqa", "reflect", "refine", "ground"))
  c.interference.enabled = True
  c.r3.update(onpolicy_every=2, onpolicy_frac=1.0, ground_refined=1.0)
  c.tasks.ground.max_len = c.tasks.refine.max_len
  c.data.update(prefetch=1, read_threads=1)
  c.evals.max_examples = c.final_eval.max_examples = 4
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps = 6, 6, 100
  loop.train_and_evaluate(c, str(tmp_path), jax.devices()[:1])
  from r3jax.train import metrics as metrics_lib
  rows = [r for r in metrics_lib.read(str(tmp_path)) if "loss/ground" in r]
  assert len(rows) == 6
  assert all(np.isfinite(r["loss/ground"]) and r["loss/ground"] >= 0
             and 0 <= r["token_acc/ground"] <= 1 for r in rows)
  import json
  import os
  windows = sorted(os.listdir(tmp_path / "drafts"))
  assert windows
  drafts = json.load(open(tmp_path / "drafts" / windows[0]))["ground"]
  assert drafts and all(isinstance(d, str) or len(d) == 3
                        for d in drafts.values())
