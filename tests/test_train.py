"""Training: resume equals uninterrupted; the metrics writer.

Sharded-equals-single-device lives in test_parallel.py."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from r3jax.data import pipeline
from r3jax.run import loop
from r3jax.train.checkpoint import Checkpointer
from r3jax.train import metrics as metrics_lib


class _Crash(Exception):
  pass


def test_resume_after_crash_equals_uninterrupted(tiny, tmp_path, monkeypatch):
  """R3 tasks whose drafts at step 6 are the model's own (window 1), refine's
  with the model's own reflection on them, through the instrumented step. (A
  real kill -9 of the joint run: test_faults.py.)"""
  c = tiny(("caption", "reflect", "refine"))
  c.interference.enabled = True
  c.r3.update(onpolicy_every=2, onpolicy_frac=0.5, onpolicy_reflections=True)
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
  assert {k: v for k, v in full.items() if "seconds" not in k} == {
      k: v for k, v in resumed.items() if "seconds" not in k}
  # A checkpoint evaluated on its own is the run's final evaluation.
  again = loop.evaluate_checkpoint(c, str(tmp_path / "crash"), devices=one)
  assert again.keys() - {"eval_seconds"} <= resumed.keys()
  assert {k: v for k, v in again.items() if "seconds" not in k} == {
      k: resumed[k] for k in again if "seconds" not in k}

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
  # Step 6 trained on the model's own drafts.
  windows = [json.load(open(tmp_path / s / "drafts" / "window000001.json"))
             for s in ("full", "crash")]
  assert windows[0] == windows[1] and windows[0]["reflect"]
  assert windows[0]["refine"]
  assert {type(d) for d in windows[0]["reflect"].values()} == {str}
  pairs = list(windows[0]["refine"].values())
  assert {(type(d), len(d), type(d[0]), type(d[1])) for d in pairs} == {
      (list, 2, str, str)}, pairs


def test_writer_keeps_keys_and_gives_tensorboard_legal_tags(tmp_path, caplog):
  w = metrics_lib.Writer(str(tmp_path))
  w.write(3, {"interf/conflict@-0.05/caption:vqa": 1.0, "loss": 2.0})
  w.close()
  assert metrics_lib.read(str(tmp_path)) == [
      {"step": 3, "interf/conflict@-0.05/caption:vqa": 1.0, "loss": 2.0}]
  assert metrics_lib.tb_tag("interf/conflict@-0.05/caption:vqa") == (
      "interf/conflict_-0.05/caption_vqa")
  assert "illegal" not in caplog.text


def test_the_metrics_writer_does_not_load_torch(tmp_path):
  """tensorboardX would import torch (installed for the parity tests) in
  every run; the writer hides it for that import, and torch still imports
  afterwards."""
  code = ("import sys; from r3jax.train import metrics; "
          f"w = metrics.Writer({str(tmp_path)!r}); w.write(1, {{'loss': 1.0}}); "
          "print('torch' in sys.modules); import torch; print(torch.__name__)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))), check=True).stdout
  assert out.split() == ["False", "torch"]
  assert os.listdir(tmp_path / "tb")
