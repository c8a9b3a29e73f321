"""Training: sharded equals single-device, resume equals uninterrupted."""

import json
import os

import jax
import numpy as np
import pytest

from r3jax.data import pipeline
from r3jax.train import loop
from r3jax.train.checkpoint import Checkpointer
from r3jax.train import metrics as metrics_lib
from r3jax.train import step as step_lib


def _train(config, devices, steps):
  mesh, world, setup, init = loop.build(config, devices)
  state = init()
  data = pipeline.TrainData(world.train_source, world.tokenizer, config.tasks,
                            config.seed, mesh)
  update = loop.make_update(config, setup, world.make_model)
  ms = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      state, m = update(state, next(data))
      ms.append(jax.device_get(m))
  return jax.device_get(state), ms, state


def test_sharded_training_equals_single_device(tiny):
  """Parameters, losses and every interference statistic agree on 1 and 8
  devices (data x fsdp x tensor). The aggregation method (UPGrad) runs the
  same instrumented path as the plain weighted sum, plus its solver."""
  def config(**mesh):
    c = tiny(**mesh)
    c.interference.method = "upgrad"
    return c
  single, m1, _ = _train(config(), jax.devices()[:1], 3)
  sharded, m8, live = _train(config(data=2, fsdp=2, tensor=2), jax.devices(), 3)
  assert "group/enc/block0/cos/caption:vqa" in m1[0]
  # The sharded run really is sharded: some parameter is split over each axis.
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(live["params"])}
  assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs)
  flat1 = jax.tree_util.tree_flatten_with_path(single)[0]
  flat8 = dict(jax.tree_util.tree_flatten_with_path(sharded)[0])
  assert len(flat1) == len(flat8)
  for path, a in flat1:
    np.testing.assert_allclose(a, flat8[path], atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  for a, b in zip(m1, m8):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # Learning happened (the update changed the loss), so equality is not vacuous.
  assert m1[-1]["loss"] < m1[0]["loss"]


class _Crash(Exception):
  pass


@pytest.mark.parametrize("variant", ["joint", "r3_onpolicy"])
def test_resume_after_crash_equals_uninterrupted(tiny, tmp_path, monkeypatch,
                                                 variant):
  if variant == "joint":
    c = tiny()
  else:  # R3 tasks whose drafts at step 6 are the model's own (window 1)
    c = tiny(("caption", "reflect", "refine"))
    c.r3.update(onpolicy_every=2, onpolicy_frac=0.5)
    c.data.update(prefetch=1, read_threads=1)
    c.evals.max_examples = c.final_eval.max_examples = 4
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps = 6, 2, 100
  one = jax.devices()[:1]
  full = loop.train_and_evaluate(c, str(tmp_path / "full"), one)

  # Die while computing step 5: the step-4 checkpoint must carry the run.
  real_next = pipeline.TrainData.__next__
  calls = {"n": 0}

  def crashing_next(self):
    calls["n"] += 1
    if calls["n"] == 5:
      raise _Crash()
    return real_next(self)

  monkeypatch.setattr(pipeline.TrainData, "__next__", crashing_next)
  with pytest.raises(_Crash):
    loop.train_and_evaluate(c, str(tmp_path / "crash"), one)
  monkeypatch.setattr(pipeline.TrainData, "__next__", real_next)
  ckpts = sorted(os.listdir(tmp_path / "crash" / "checkpoints"))
  assert ckpts == ["2", "4"]
  resumed = loop.train_and_evaluate(c, str(tmp_path / "crash"), one)

  for split in ("full", "crash"):
    assert os.path.exists(tmp_path / split / "config.json")
  a = loop.evaluate_checkpoint(c, str(tmp_path / "full"), "validation",
                               devices=one)
  b = loop.evaluate_checkpoint(c, str(tmp_path / "crash"), "validation",
                               devices=one)
  assert {k: v for k, v in a.items() if "seconds" not in k} == {
      k: v for k, v in b.items() if "seconds" not in k}
  assert {k: v for k, v in full.items() if "seconds" not in k} == {
      k: v for k, v in resumed.items() if "seconds" not in k}

  # Bit-exact state, and identical logs (steps 5-6 logged once, same values).
  _, _, setup, _ = loop.build(c, one)
  states = []
  for split in ("full", "crash"):
    ck = Checkpointer(str(tmp_path / split / "checkpoints"), 2, 2)
    states.append(jax.device_get(ck.restore(setup.abstract)))
    ck.close()
  (s_full, d_full), (s_crash, d_crash) = states
  assert d_full == d_crash
  for x, y in zip(jax.tree.leaves(s_full), jax.tree.leaves(s_crash)):
    np.testing.assert_array_equal(x, y)
  rows = [metrics_lib.read(str(tmp_path / s)) for s in ("full", "crash")]
  drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k
                    and k != "examples_per_sec"}
  assert [drop(r) for r in rows[0]] == [drop(r) for r in rows[1]]
  assert [r["step"] for r in rows[1] if "loss" in r] == list(range(1, 7))
  assert json.load(open(tmp_path / "crash" / "config.json"))["total_steps"] == 6
  if variant == "r3_onpolicy":  # step 6 trained on the model's own drafts
    windows = [json.load(open(tmp_path / s / "drafts" / "window000001.json"))
               for s in ("full", "crash")]
    assert windows[0] == windows[1] and windows[0]["reflect"]
    assert windows[0]["refine"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tiny, tmp_path, monkeypatch):
  c = tiny()
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps = 8, 2, 100
  real = step_lib.make_update

  def poisoned(*args, **kwargs):
    update = real(*args, **kwargs)

    def run(state, batch):  # step 5 goes non-finite, as a divergence would
      state, m = update(state, batch)
      if int(state["step"]) >= 5:
        state = jax.tree.map(lambda x: x * np.nan if x.dtype == np.float32
                             else x, state)
        m = dict(m, loss=m["loss"] * np.nan)
      return state, m
    return run

  monkeypatch.setattr(step_lib, "make_update", poisoned)
  with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5; "
                     r"the last checkpoint \(step 4\) is kept"):
    loop.train_and_evaluate(c, str(tmp_path), jax.devices()[:1])
  _, _, setup, _ = loop.build(c, jax.devices()[:1])
  ck = Checkpointer(str(tmp_path / "checkpoints"), 2, 2)
  assert ck.all_steps() == [2, 4]
  for step in ck.all_steps():
    state, _ = ck.restore(setup.abstract, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(
        jax.device_get(state)))
  ck.close()
  rows = metrics_lib.read(str(tmp_path))
  assert max(r["step"] for r in rows) == 4
  assert all(np.isfinite(v) for r in rows for v in r.values())


def test_writer_keeps_keys_and_gives_tensorboard_legal_tags(tmp_path, caplog):
  w = metrics_lib.Writer(str(tmp_path))
  w.write(3, {"interf/conflict@-0.05/caption:vqa": 1.0, "loss": 2.0})
  w.close()
  assert metrics_lib.read(str(tmp_path)) == [
      {"step": 3, "interf/conflict@-0.05/caption:vqa": 1.0, "loss": 2.0}]
  assert metrics_lib.tb_tag("interf/conflict@-0.05/caption:vqa") == (
      "interf/conflict_-0.05/caption_vqa")
  assert "illegal" not in caplog.text
