"""The extension recipes of docs/extending.md, each defined here, in one file,
without editing anything under r3jax/: it trains 2 steps, is evaluated, and
logs its metrics."""

import dataclasses
import json
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r3jax.data import tasks
from r3jax.interference import methods
from r3jax.r3 import rewards
from r3jax.r3 import variants
from r3jax.run import loop
from r3jax.world.config import NUMBERS


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# Recipe: an aggregation method that needs more than the Grams.
@dataclasses.dataclass(frozen=True)
class SignAgreement:
  """Keeps the coordinates where every task's gradient has the same sign
  (the others are zeroed), the sum of the task gradients there, scaled by
  `scale`; logs the share of coordinates kept."""
  name: ClassVar[str] = "sign_agreement"
  per_group: ClassVar[bool] = False
  edits_gradients: ClassVar[bool] = True
  scale: float = 1.0

  def init(self, num_tasks, num_groups):
    return {"kept_ema": jnp.zeros((), jnp.float32)}

  def __call__(self, inp, state):
    def keep(*g):
      signs = jnp.stack([jnp.sign(x) for x in g])
      return jnp.all(signs == signs[0], axis=0) & (signs[0] != 0)

    masks = jax.tree.map(keep, *inp.grads_T)
    direction = jax.tree.map(
        lambda m, *g: self.scale * jnp.where(m, sum(g), 0.0), masks,
        *inp.grads_T)
    sizes = sum(m.size for m in jax.tree.leaves(masks))
    kept = sum(jnp.sum(m) for m in jax.tree.leaves(masks)) / sizes
    ema = 0.9 * state["kept_ema"] + 0.1 * kept
    return direction, {"kept_ema": ema}, {"kept": kept, "kept_ema": ema}


@pytest.fixture
def sign_agreement():
  methods.register(SignAgreement)
  yield SignAgreement
  methods.unregister(SignAgreement.name)


def test_a_new_aggregation_method_that_edits_the_gradients(
    tiny, tmp_path, sign_agreement):
  c = tiny()
  c.total_steps = 2
  c.interference.enabled = True
  c.interference.method = "sign_agreement"
  c.interference.method_args = {"scale": 0.5}
  wd = str(tmp_path / "run")
  result = loop.train_and_evaluate(c, wd, jax.devices()[:1])
  rows = [r for r in _rows(wd) if "method/kept" in r]
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert 0 < r["method/kept"] < 1
    # The interference statistics are measured as with any method; there
    # are no task weights to log.
    assert "interf/cos/caption:vqa" in r and "interf/align/vqa" in r
    assert not any("weights/" in k for k in r)
  np.testing.assert_allclose(rows[0]["method/kept_ema"],
                             0.1 * rows[0]["method/kept"], rtol=1e-6)
  assert "vqa/accuracy" in result and "caption/f1" in result
  # The step applies the method's direction: at the first step (the same
  # parameters and batch) scale 1 gives twice scale 0.5's gradient norm.
  c.total_steps, c.interference.method_args = 1, {"scale": 1.0}
  loop.train_and_evaluate(c, str(tmp_path / "scale1"), jax.devices()[:1])
  first = [r for r in _rows(str(tmp_path / "scale1")) if "method/kept" in r][0]
  assert first["method/kept"] == rows[0]["method/kept"]
  np.testing.assert_allclose(first["grad_norm"], 2 * rows[0]["grad_norm"],
                             rtol=1e-5)


# Recipe: a new world task, "how many objects are there ?" answered by a
# number word.
HOW_MANY = "how many objects are there ?"


def _how_many(record):
  return NUMBERS[int(record["scene"]["num_objects"])]


def _score_how_many(task, preds, items, records):
  right = [p == target for p, (_, _, target, _) in zip(preds, items)]
  return {"accuracy": float(np.mean(right))}


NUM_OBJECTS = tasks.Task(
    "num_objects",
    sample=lambda r, rng: (HOW_MANY, _how_many(r)),
    eval_items=lambda r: [(HOW_MANY, _how_many(r), {})],
    score=_score_how_many,
    defaults=(8, 12),
)


@pytest.fixture
def num_objects():
  tasks.register(NUM_OBJECTS)
  yield NUM_OBJECTS
  tasks.unregister(NUM_OBJECTS.name)


def test_a_new_world_task(tiny, tmp_path, num_objects):
  from r3jax.run import world_setup
  c = tiny(("caption", "vqa", "num_objects"))
  c.total_steps = 2
  c.interference.enabled = False
  wd = str(tmp_path / "run")
  result = loop.train_and_evaluate(c, wd, jax.devices()[:1])
  assert 0 <= result["num_objects/accuracy"] <= 1
  assert "vqa/accuracy" in result and "caption/f1" in result
  rows = [r for r in _rows(wd) if "loss/num_objects" in r]
  assert [r["step"] for r in rows] == [1, 2]
  assert any("test/num_objects/accuracy" in r for r in _rows(wd))
  # Its prompt token follows the words: no word's id moved, so parameters
  # of runs without the task keep their meaning.
  tok = world_setup.load(c).tokenizer
  plain = world_setup.load(tiny()).tokenizer
  assert tok.vocab_size == plain.vocab_size + 1
  assert tok.task_id("num_objects") == plain.vocab_size
  assert tok.tokens[:plain.vocab_size] == plain.tokens
  assert tok.decode([tok.task_id("num_objects"), *tok.encode("two")]) == "two"


# Recipe: a new R3 variant, "reflect, then refine without the reflection":
# the reflect stage decides whether a round edits; the refined caption is
# decoded from the refine prompt alone (the refine_direct task's format).
REFLECT_THEN_DIRECT = variants.Variant(
    "reflect_then_direct", tasks=("reflect", "refine_direct"),
    reflect=True, refine_reads_reflection=False)


@pytest.fixture
def reflect_then_direct():
  variants.register(REFLECT_THEN_DIRECT)
  yield REFLECT_THEN_DIRECT
  variants.unregister(REFLECT_THEN_DIRECT.name)


def test_a_new_r3_variant(tiny, tmp_path, reflect_then_direct, monkeypatch):
  from r3jax.run import source
  c = tiny(("caption", "reflect", "refine_direct"))
  c.total_steps = 2
  c.interference.enabled = False
  c.r3.variant = "reflect_then_direct"
  c.r3.rounds = 1
  wd = str(tmp_path / "run")
  result = loop.train_and_evaluate(c, wd, jax.devices()[:1])
  for key in ("r3/round1/f1", "r3/reflect_right", "r3/refine_right",
              "loss/reflect", "loss/refine_direct"):
    assert key in result or any(key in r for r in _rows(wd)), key
  # A round: rows whose reflection names an edit decode their refined
  # caption from <refine> DRAFT <sep>, not after the reflection.
  _, world, setup, init = loop.build(c, jax.devices()[:1])
  lp = source.r3_loop_for(c, setup, world.tokenizer, world.world, 8)
  tok = world.tokenizer
  draft = tok.encode("a red circle")
  prompts = [[tok.task_id("reflect")] + draft + [tok.sep_id]] * 2
  edit, stop = tok.encode("make it blue"), tok.encode("stop")
  monkeypatch.setattr(lp, "_reflect", lambda *a: [edit + [tok.sep_id],
                                                  stop + [tok.eos_id]])
  seen = []
  monkeypatch.setattr(lp, "_decode", lambda params, kv, rows, second, *a: (
      seen.extend(second) or [tok.encode("a blue circle") + [tok.eos_id]]))
  monkeypatch.setattr(rewards, "read_branch",
                      lambda reflection, refined: (True, reflection == "stop"))
  outs = lp._round(None, None, [0, 1], prompts, jax.random.key(0))
  assert seen == [[tok.task_id("refine")] + draft + [tok.sep_id]]
  assert outs == [edit + [tok.sep_id] + tok.encode("a blue circle") +
                  [tok.eos_id], stop]


def test_a_task_loss_term_joins_its_cross_entropy():
  """Task.loss: a term beside the task's token cross-entropy, normalised
  with its tokens (how the R3 tasks add the consistency and grounded
  losses, r3jax/r3/tasks.py)."""
  from r3jax.train import losses
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
  b = {"targets": jnp.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]]),
       "loss_mask": jnp.array([[1., 1, 1, 0, 0], [1, 1, 0, 0, 0]])}

  def term(logits_BxLxV, sub):
    # the squared logit mass of the masked positions, counted as 2 tokens
    mass = jnp.sum(jnp.square(logits_BxLxV) * sub["loss_mask"][..., None])
    return 0.01 * mass, jnp.float32(1.0), jnp.float32(2.0)

  tasks.register(tasks.Task("penalised", sample=lambda r, rng: ("q", "a"),
                            eval_items=None, loss=term))
  try:
    plain, plain_acc = losses.token_xent(logits, b, "caption")
    got, acc = losses.token_xent(logits, b, "penalised")
  finally:
    tasks.unregister("penalised")
  n = 5.0
  extra, _, _ = term(logits, b)
  np.testing.assert_allclose(got, (plain * n + extra) / (n + 2), rtol=1e-6)
  np.testing.assert_allclose(acc, (plain_acc * n + 1) / (n + 2), rtol=1e-6)
