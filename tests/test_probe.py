"""The relation diagnosis: questions parsed back to their objects, the
ridge probe, and the traced decoder against the model's own forward pass."""

import jax
import numpy as np
import pytest
from flax import nnx

from r3jax.analysis import probe
from r3jax.data import world_tfds
from r3jax.run import world_setup
from r3jax.world import scene_from_arrays


@pytest.fixture(scope="module")
def world():
  from conftest import tiny_config
  return world_setup.load(tiny_config())


def test_parsed_objects_answer_every_relation_question(world):
  """Each question's parsed objects, compared on the named axis, give the
  recorded answer; the token positions hold the words they claim."""
  cfg, tok = world.world, world.tokenizer
  source = world_tfds.data_source(world.builder, "train")
  records = [source[i] for i in range(len(source))]
  items = probe.relation_items(records, tok, cfg, patch_size=8)
  assert len(items) > 20
  for it in items:
    axis = 0 if it.relation == "left" else 1
    a, b = (it.b_xy, it.a_xy) if it.swapped else (it.a_xy, it.b_xy)
    assert (a[axis] < b[axis]) == it.yes
    words = tok.decode(it.tokens[1:-1].tolist()).split()
    assert words[it.a_end - 1] in cfg.shapes + ("object",)
    assert words[it.b_end - 1] in cfg.shapes + ("object",)
    assert it.tokens[it.answer] == tok.sep_id
    scene = scene_from_arrays(records[it.record]["scene"], cfg)
    centres = {(o.x, o.y) for o in scene.objects}
    assert {it.a_xy, it.b_xy} <= centres and it.a_xy != it.b_xy
    assert it.a_kind in {o.kind for o in scene.objects if (o.x, o.y) == it.a_xy}
    side = cfg.image_size // 8
    col, row = int(it.a_xy[0] * cfg.image_size // 8), int(
        it.a_xy[1] * cfg.image_size // 8)
    assert row * side + col in it.a_patches


def test_ridge_probe_reads_a_linear_target_and_not_noise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(600, 20))
  y = np.stack([x @ rng.normal(size=20), rng.normal(size=600)], 1)
  train = np.arange(600) < 420
  r2 = probe.ridge_r2(x, y, train)
  assert r2[0] > 0.99 and abs(r2[1]) < 0.1
  labels = np.array(["a", "b", "c"])[(x[:, :3]).argmax(1)]  # linear classes
  assert probe.ridge_accuracy(x, list(labels), train) > 0.8
  noise = rng.choice(["a", "b", "c"], 600)
  assert probe.ridge_accuracy(x, list(noise), train) < 0.5


def test_trace_matches_the_models_forward_pass(world):
  with nnx.use_eager_sharding(False):
    model = world.make_model(nnx.Rngs(0))
  head = model.decoder.head
  head.kernel[...] = jax.random.normal(jax.random.key(1), head.kernel.shape)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  tokens = rng.integers(0, world.tokenizer.vocab_size, (2, 7)).astype(np.int32)
  img, states, attn = probe.trace(model, images, tokens)
  dec = model.decoder
  np.testing.assert_allclose(dec.head(dec.ln_final(states[-1])),
                             model(images, tokens), rtol=1e-5, atol=1e-5)
  assert len(attn) == len(states) == len(dec._layers())
  np.testing.assert_allclose(np.asarray(attn[0]).sum(-1), 1.0, rtol=1e-5)
  assert attn[0].shape == (2, dec._layers()[0].cross_attn.query.kernel.shape[1],
                           7, img.shape[1])


def test_diagnosis_of_a_run_has_per_head_shares_that_average_to_the_layer(
    tmp_path):
  """relation_diagnosis on a 2-step run (with cross_pos="xy"): each head's
  attention share on A and on B, averaged over heads, is the layer's share,
  every share is in [0, 1], and the table prints a row per position and
  layer for the heads."""
  from conftest import tiny_config
  from r3jax.run import loop
  c = tiny_config()
  c.total_steps, c.interference.enabled = 2, False
  c.model.cross_pos = "xy"
  wd = str(tmp_path / "run")
  loop.train_and_evaluate(c, wd, jax.devices()[:1])
  d = probe.relation_diagnosis(wd, n_images=32, split="train")
  heads = c.model.dec_heads
  for where in ("a_end", "b_end", "answer"):
    for layer in range(c.model.dec_depth):
      for obj in ("a", "b"):
        per_head = [d[f"attn/{where}/layer{layer}/head{h}/{obj}"]
                    for h in range(heads)]
        assert all(0 <= v <= 1 for v in per_head)
        np.testing.assert_allclose(np.mean(per_head),
                                   d[f"attn/{where}/layer{layer}/{obj}"],
                                   rtol=1e-5)
  text = probe.table(d)
  last = c.model.dec_depth - 1
  assert f"| answer | {last} | " in text and text.count("head ") >= heads
