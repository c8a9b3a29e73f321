"""Faults a run survives: SIGKILL, SIGTERM, half-written and corrupt
checkpoints, non-finite steps; and no checkpoint holds a pickle."""

import ast
import copy
import functools
import glob
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, committed_steps, main_command
from r3jax.data import pipeline
from r3jax.train import checkpoint as ckpt_lib
from r3jax.run import loop
from r3jax.train import metrics as metrics_lib
from r3jax.train import nonfinite
from r3jax.train import preemption

# A failed orbax restore leaves coroutines that complain when collected.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = 16


def _config(tiny):
  """configs/joint.py:runlocal plus the overrides in main_command; the plain step
  (the instrumented one resumes exactly in test_train.py)."""
  c = tiny()
  c.total_steps, c.keep_ckpts, c.eval_every_steps = STEPS, 4, 100
  c.final_eval.max_examples = 4
  c.interference.enabled = False
  return c


def _launch(c, workdir, log):
  """`python -m r3jax.main` on one CPU device (as the reference run uses)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  if not env["XLA_FLAGS"]:
    del env["XLA_FLAGS"]
  with open(log, "w") as out:
    return subprocess.Popen(main_command(c, workdir), cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def _wait_for(what, proc, timeout=300):
  t0 = time.monotonic()
  while not what():
    assert proc.poll() is None, f"run ended early ({proc.returncode})"
    assert time.monotonic() - t0 < timeout, "timed out"
    time.sleep(0.01)


def _final(c, setup, workdir):
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             c.keep_ckpts, c.ckpt_every_steps)
  try:
    assert ck.latest_step() == c.total_steps
    state, data_state = ck.restore(setup.abstract)
    return jax.device_get(state), data_state
  finally:
    ck.close()


def _assert_same_run(c, setup, workdir, reference):
  (s, d), (s_ref, d_ref) = _final(c, setup, workdir), reference["final"]
  assert d == d_ref
  flat = jax.tree_util.tree_flatten_with_path(s)[0]
  flat_ref = jax.tree_util.tree_flatten_with_path(s_ref)[0]
  assert [p for p, _ in flat] == [p for p, _ in flat_ref]
  for (path, x), (_, y) in zip(flat, flat_ref):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k
                    and k != "examples_per_sec"}
  assert [drop(r) for r in metrics_lib.read(workdir)] == [
      drop(r) for r in reference["rows"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run, in this process on one device."""
  from conftest import tiny_config
  c = _config(tiny_config)
  workdir = str(tmp_path_factory.mktemp("reference"))
  one = jax.devices()[:1]
  loop.train_and_evaluate(c, workdir, one)
  _, _, setup, _ = loop.build(c, one)
  out = dict(config=c, workdir=workdir, setup=setup,
             rows=metrics_lib.read(workdir))
  out["final"] = _final(c, setup, workdir)
  return out


@pytest.fixture
def launch():
  """_launch, killing whatever is still running when the test ends."""
  procs = []
  yield lambda *args: procs.append(_launch(*args)) or procs[-1]
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def test_killed_then_preempted_run_resumes_to_the_uninterrupted_state(
    reference, launch, tmp_path):
  """kill -9 at an arbitrary step, rerun, SIGTERM, rerun: the final state
  (parameters, optimizer, data iterator, step counters) and every log row
  equal an uninterrupted run's bit for bit."""
  c, workdir = reference["config"], str(tmp_path / "run")
  log = str(tmp_path / "log")

  run = launch(c, workdir, log)
  _wait_for(lambda: committed_steps(workdir), run)
  run.kill()
  assert run.wait() == -signal.SIGKILL
  killed_at = committed_steps(workdir)[-1]
  assert killed_at < STEPS  # it died while training
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 99, "lo')  # a log row cut short by the kill

  run = launch(c, workdir, log)
  _wait_for(lambda: committed_steps(workdir)[-1] > killed_at, run)
  run.send_signal(signal.SIGTERM)
  assert run.wait(timeout=300) == 75
  stopped = re.search(r"stopped by SIGTERM after step (\d+); its checkpoint "
                      r"is saved", open(log).read())
  assert stopped, open(log).read()[-3000:]
  stopped = int(stopped.group(1))
  assert killed_at < stopped < STEPS
  assert committed_steps(workdir)[-1] == stopped
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
              if "tmp" in n]
  rows = [r for r in metrics_lib.read(workdir) if "loss" in r]
  assert rows[-1]["step"] == stopped

  run = launch(c, workdir, log)
  assert run.wait(timeout=300) == 0, open(log).read()[-3000:]
  _assert_same_run(c, reference["setup"], workdir, reference)
  # The default console: the final table, no library INFO lines (orbax's
  # restore and save bookkeeping would be about 40 of them).
  out = open(log).read()
  assert "caption fact F1" in out
  assert not re.search(r"^I\d{4} ", out, re.M), out[:3000]
  assert "orbax" not in out, out[:3000]


def _garble(path):
  b = bytearray(open(path, "rb").read())
  for i in range(len(b) // 3, len(b) // 3 + 32):
    b[i] ^= 0x5A
  open(path, "wb").write(bytes(b))


def test_half_written_and_corrupt_checkpoints_are_set_aside(
    reference, tmp_path, caplog):
  """A run killed while saving its last step left a temporary directory; the
  two before it hold another step's arrays (orbax reads them back without an
  error: the fingerprint catches it) and a truncated metadata file. The rerun
  reports each by step, moves them aside, resumes from the good one and ends
  equal to the uninterrupted run."""
  c, workdir = reference["config"], str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert committed_steps(workdir) == [10, 12, 14, 16]
  partial = "16.orbax-checkpoint-tmp-1754000000"
  os.rename(os.path.join(ckpts, "16"), os.path.join(ckpts, partial))
  shutil.rmtree(os.path.join(ckpts, "14", "state"))
  shutil.copytree(os.path.join(ckpts, "10", "state"),
                  os.path.join(ckpts, "14", "state"))
  meta = os.path.join(ckpts, "12", "state", "_METADATA")
  with open(meta, "r+b") as f:
    f.truncate(os.path.getsize(meta) // 2)

  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(c, workdir, jax.devices()[:1])
  log = caplog.text
  assert re.search(r"half-written checkpoint for step 16; moved to \S+"
                   r"checkpoints_bad/" + partial, log)
  assert re.search(r"checkpoint at step 14 does not restore \("
                   r"CorruptCheckpoint: checkpoint at step 14 does not match "
                   r"the fingerprint saved with it: \['", log)
  assert re.search(r"checkpoint at step 12 does not restore \(JSONDecodeError",
                   log)
  assert sorted(os.listdir(ckpts + "_bad")) == ["12", "14", partial]
  assert committed_steps(workdir) == [10, 12, 14, 16]  # saved again
  _assert_same_run(c, reference["setup"], workdir, reference)


def test_garbled_array_bytes_are_set_aside(tmp_path):
  """Bytes flipped in a checkpoint's array file fail either in the decoder or
  at the fingerprint; which one depends on where they land. Either way the
  step is moved aside and the one before it restored."""
  state = {"w": jax.numpy.arange(4096.0).reshape(64, 64),
           "n": jax.numpy.int32(3)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), 3, 1)
  for step in (1, 2):
    ck.save(step, jax.tree.map(lambda x: x + step, state), {"pos": step})
  ck.wait()
  data = glob.glob(str(tmp_path / "ck" / "2" / "state" / "ocdbt.process_0"
                       / "d" / "*"))
  _garble(max(data, key=os.path.getsize))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), state)
  step, got, data_state = ck.restore_latest_intact(abstract)
  assert (step, data_state, int(got["n"])) == (1, {"pos": 1}, 4)
  np.testing.assert_array_equal(got["w"], state["w"] + 1)
  assert os.listdir(str(tmp_path / "ck_bad")) == ["2"]
  ck.close()


def test_a_run_whose_every_checkpoint_fails_raises_and_moves_nothing(
    tmp_path):
  """Every checkpoint failing is more likely a changed config than
  corruption: the error surfaces and the checkpoints stay where they are."""
  state = {"w": jax.numpy.arange(6.0), "n": jax.numpy.int32(3)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), 3, 1)
  for step in (1, 2):
    ck.save(step, state, {"pos": step})
  ck.wait()
  wrong = {"w": jax.ShapeDtypeStruct((7,), np.float32,
                                     sharding=state["w"].sharding),
           "n": jax.ShapeDtypeStruct((), np.int32,
                                     sharding=state["n"].sharding)}
  with pytest.raises(ValueError):
    ck.restore_latest_intact(wrong)
  assert ck.all_steps() == [1, 2]
  assert not os.path.exists(str(tmp_path / "ck_bad"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), state)
  step, got, data_state = ck.restore_latest_intact(abstract)
  assert (step, data_state, int(got["n"])) == (2, {"pos": 2}, 3)
  ck.close()


def test_fingerprint_sees_any_one_element_change():
  x = jax.numpy.arange(12.0).reshape(3, 4)
  base = ckpt_lib.fingerprint({"x": x})["['x']"]
  for i, j in [(0, 0), (2, 3), (1, 2)]:
    assert ckpt_lib.fingerprint({"x": x.at[i, j].add(1e-6)})["['x']"] != base
  # Swapping two elements moves them, which a plain sum would miss.
  swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
  assert ckpt_lib.fingerprint({"x": swapped})["['x']"] != base
  # Where the array lives does not matter.
  mesh = jax.make_mesh((4,), ("d",))
  spread = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, "d")))
  assert ckpt_lib.fingerprint({"x": spread})["['x']"] == base


def _poison_vqa_at(monkeypatch, bad_step):
  """The vqa batch of step `bad_step` gets a NaN loss mask: that task's loss,
  and with it the total and the gradient, go non-finite inside the step."""
  real = pipeline.TrainData.__next__
  calls = {"n": 0}

  def poisoned(self):
    batch = real(self)
    calls["n"] += 1
    if calls["n"] == bad_step:
      vqa = dict(batch["vqa"])
      vqa["loss_mask"] = vqa["loss_mask"] * np.nan
      batch = dict(batch, vqa=vqa)
    return batch
  monkeypatch.setattr(pipeline.TrainData, "__next__", poisoned)


def test_skip_mode_keeps_the_state_and_counts_in_the_plain_step(tiny):
  """nonfinite="skip" in r3jax.train.step (the instrumented step: below): the
  step with a non-finite loss changes nothing but the step counter and the
  skip count; the next good step trains again."""
  c = tiny()
  c.nonfinite = "skip"
  c.interference.enabled = False
  one = jax.devices()[:1]
  mesh, world, setup, init = loop.build(c, one)
  data = pipeline.TrainData(world.train_source, world.tokenizer, c.tasks,
                            c.seed, mesh)
  good, bad = next(data), next(data)
  bad = dict(bad, vqa=dict(bad["vqa"], loss_mask=bad["vqa"]["loss_mask"] *
                           np.nan))
  update = loop.make_update(c, setup, world.make_model)
  with jax.set_mesh(mesh):
    state, _ = update(init(), good)
    before = jax.device_get(state)
    state, m = update(state, bad)
    m, after = jax.device_get((m, state))
    state, m2 = update(state, good)
    m2, state = jax.device_get((m2, state))
  assert m["skipped"] == 1 and m["skipped_total"] == 1
  assert not np.isfinite(m["loss/vqa"]) and np.isfinite(m["loss/caption"])
  assert (int(after["step"]), int(after["skipped"])) == (2, 1)
  for x, y in zip(jax.tree.leaves((before["params"], before["opt"])),
                  jax.tree.leaves((after["params"], after["opt"]))):
    np.testing.assert_array_equal(x, y)
  assert m2["skipped"] == 0 and m2["skipped_total"] == 1
  assert (int(state["step"]), int(state["skipped"])) == (3, 1)
  assert not all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(state["params"]), jax.tree.leaves(after["params"])))


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_non_finite_task_loss_stops_the_run_or_is_skipped(
    tiny, tmp_path, monkeypatch, mode):
  """Step 5's VQA loss goes non-finite inside the (instrumented) step. "stop":
  the error names loss/vqa and the gradient norm, and the checkpoints hold only
  the finite steps before it. "skip": the run finishes, step 5 is logged and
  counted as skipped, its state equals the step before's, and the count is in
  the checkpointed state."""
  c = tiny()
  c.total_steps, c.ckpt_every_steps, c.eval_every_steps = 6, 2, 100
  c.final_eval.max_examples = 4
  c.nonfinite = mode
  if mode == "skip":  # a checkpoint before and after the skipped step
    c.ckpt_every_steps, c.keep_ckpts = 1, 3
  _poison_vqa_at(monkeypatch, 5)
  one = jax.devices()[:1]
  if mode == "stop":
    with pytest.raises(FloatingPointError, match=(
        r"^non-finite loss/vqa, loss, grad_norm, .* at step 5; the last "
        r"checkpoint \(step 4\) is kept and nothing later is saved$")):
      loop.train_and_evaluate(c, str(tmp_path), one)
  else:
    loop.train_and_evaluate(c, str(tmp_path), one)
  _, _, setup, _ = loop.build(c, one)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), 3, 1)
  assert ck.all_steps() == ([2, 4] if mode == "stop" else [4, 5, 6])
  states = {}
  for step in ck.all_steps():
    state, _ = ck.restore(setup.abstract, step)
    states[step] = state = jax.device_get(state)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
    assert int(state["skipped"]) == (step >= 5)
  ck.close()
  if mode == "skip":
    kept = lambda s: jax.tree.leaves((states[s]["params"], states[s]["opt"]))
    for x, y in zip(kept(4), kept(5)):
      np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(kept(5), kept(6)))
  rows = {r["step"]: r for r in metrics_lib.read(str(tmp_path)) if "loss" in r}
  if mode == "stop":
    assert max(rows) == 4
    assert all(np.isfinite(v) for r in rows.values() for v in r.values())
  else:
    assert sorted(rows) == list(range(1, 7))
    assert [rows[s]["skipped"] for s in rows] == [0, 0, 0, 0, 1, 0]
    assert [rows[s]["skipped_total"] for s in rows] == [0, 0, 0, 0, 1, 1]
    assert not np.isfinite(rows[5]["loss/vqa"])
    assert np.isfinite(rows[5]["loss/caption"]) and np.isfinite(
        rows[6]["loss/vqa"])


def test_nonfinite_check_orders_task_losses_first_and_guards_gradients():
  m = {"grad_norm": np.nan, "loss": 1.0, "loss/ita": 2.0, "lr": 0.1}
  with pytest.raises(FloatingPointError, match=r"^non-finite grad_norm at "
                     r"step 3; the last checkpoint \(step 2\)"):
    nonfinite.check(m, 3, 2)
  assert nonfinite.bad_keys(dict(m, **{"loss/vqa": np.inf, "loss": np.nan,
                                       "cos": np.nan})) == [
      "loss/vqa", "loss", "grad_norm", "cos"]
  # A finite loss with a non-finite gradient is skipped too.
  old = {"step": np.int32(3), "skipped": np.int32(0), "params": np.ones(2)}
  new = {"step": np.int32(4), "skipped": np.int32(0), "params": np.zeros(2)}
  state, out = nonfinite.guard(old, new, {"loss": 1.0, "grad_norm": np.nan,
                                          "update_norm": 1.0})
  assert (int(state["step"]), int(state["skipped"])) == (4, 1)
  np.testing.assert_array_equal(state["params"], old["params"])
  assert float(out["skipped"]) == 1.0
  nonfinite.check(jax.device_get(out), 4, 2, skip=True)  # logged, not raised
  with pytest.raises(FloatingPointError):
    nonfinite.check(jax.device_get(out), 4, 2, skip=False)


def test_no_pickle_in_the_code_or_in_a_checkpoint(reference):
  """Loading a checkpoint runs no code: nothing imports a pickler and no file a
  run writes is a pickle (protocol 2+ starts with 0x80 and the protocol)."""
  banned = {"pickle", "cPickle", "cloudpickle", "dill", "shelve", "joblib"}
  for path in glob.glob(os.path.join(ROOT, "r3jax", "**", "*.py"),
                        recursive=True):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom)
               else [])
      assert not {n.split(".")[0] for n in names} & banned, (path, names)
      if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
        assert not (isinstance(node.value, ast.Constant) and node.value.value
                    ), path
  files = glob.glob(os.path.join(reference["workdir"], "**", "*"),
                    recursive=True)
  files = [f for f in files if os.path.isfile(f)]
  assert any("/checkpoints/" in f for f in files)
  for f in files:
    head = open(f, "rb").read(2)
    assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03",
                                                       b"\x04", b"\x05")), f
    assert not f.endswith((".pkl", ".pickle")), f


def test_stop_on_signal_defers_the_signal_and_restores_the_handler():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("old"))
  try:
    with preemption.StopOnSignal() as stop:
      assert not stop.agreed()
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.requested and stop.agreed() and seen == []
      assert stop.signal_name == "SIGTERM"
      # Asked twice: the handler from before takes it, and stays.
      os.kill(os.getpid(), signal.SIGTERM)
      assert seen == ["old"]
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ["old", "old"]
    with preemption.StopOnSignal():
      pass
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ["old"] * 3
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_checkpoint_from_before_the_skip_count_restores_with_zero(tmp_path):
  state = {"step": jax.numpy.int32(7), "w": jax.numpy.arange(4.0)}
  old = ckpt_lib.ocp.CheckpointManager(str(tmp_path / "ck"))
  old.save(7, args=ckpt_lib.ocp.args.Composite(
      state=ckpt_lib.ocp.args.StandardSave(state),
      data=ckpt_lib.ocp.args.JsonSave({"pos": 7})))
  old.wait_until_finished()
  old.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), dict(
          state, skipped=jax.numpy.int32(0)))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), 2, 1)
  got, data_state = ck.restore(abstract)
  ck.close()
  assert data_state == {"pos": 7}
  assert (int(got["step"]), int(got["skipped"])) == (7, 0)
  np.testing.assert_array_equal(got["w"], np.arange(4.0))


def test_init_from_starts_from_another_runs_parameters_only(reference,
                                                            tmp_path):
  """config.init_from loads the parameters alone: the new run has another
  aggregation method (other state) and a fresh optimizer; with a zero
  learning rate it ends where the other run's parameters were."""
  c = copy.deepcopy(reference["config"])
  c.interference.enabled, c.interference.method = True, "famo"
  c.total_steps, c.optim.lr, c.init_from = 2, 0.0, reference["workdir"]
  one = jax.devices()[:1]
  loop.train_and_evaluate(c, str(tmp_path / "next"), one)
  _, _, setup, _ = loop.build(c, one)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "next" / "checkpoints"), 2, 2)
  state, _ = ck.restore(setup.abstract)
  ck.close()
  assert int(state["step"]) == 2 and "method" in state["aux"]
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  start = reference["final"][0]["params"]
  for path, x in flat:
    np.testing.assert_array_equal(
        x, functools.reduce(lambda d, k: d[k.key], path, start),
        err_msg=jax.tree_util.keystr(path))
  # The optimizer started fresh: its step counts are this run's 2, not 18.
  counts = [int(x) for p, x in jax.tree_util.tree_flatten_with_path(
      state["opt"])[0] if "count" in jax.tree_util.keystr(p)]
  assert counts and set(counts) == {2}
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    ckpt_lib.load_params(str(tmp_path / "nothing"), setup.abstract["params"])


def test_exported_params_load_checked_and_placed(tmp_path):
  """export_params writes a run's final parameters to params.npz; without
  checkpoints, load_params reads them back, placed per the abstract tree and
  checked against their fingerprint."""
  params = {"blocks": {0: {"w": jax.numpy.arange(8.0).reshape(2, 4)},
                       1: {"w": jax.numpy.ones((2, 4))}},
            "b": jax.numpy.zeros(3)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), 2, 1)
  ck.save(5, {"params": params, "step": jax.numpy.int32(5)}, {"pos": 5})
  ck.wait()
  ck.close()
  path = ckpt_lib.export_params(str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints")
  mesh = jax.make_mesh((2,), ("d",))
  spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "d"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=spread if x.ndim == 2 and x.shape[1] % 2 == 0
      else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
      params)
  got = ckpt_lib.load_params(str(tmp_path), abstract)
  jax.tree.map(np.testing.assert_array_equal, got, params)
  assert got["blocks"][0]["w"].sharding == spread
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["['b']"] = arrays["['b']"] + 1
  np.savez(path, **arrays)
  with pytest.raises(ckpt_lib.CorruptCheckpoint, match="fingerprint"):
    ckpt_lib.load_params(str(tmp_path), abstract)
  wrong = dict(abstract, b=jax.ShapeDtypeStruct((4,), np.float32))
  with pytest.raises(ValueError, match=r"\['b'\] is float32\[3\], the model's "
                     r"float32\[4\]"):
    ckpt_lib.load_params(str(tmp_path), wrong)
  os.remove(path)
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    ckpt_lib.load_params(str(tmp_path), abstract)


@pytest.mark.parametrize("source", ["checkpoint", "exported"])
def test_partial_init_from_keeps_only_the_new_parameters_fresh(tmp_path, source):
  """load_params_partial (config.init_from_partial) takes every parameter the
  start holds, from its checkpoint or its params.npz, and keeps the new
  run's initialisation for the ones it lacks, naming them; a parameter the
  start holds that the model lacks, or one of another shape, fails."""
  params = {"blocks": {0: {"w": jax.numpy.arange(8.0).reshape(2, 4)}},
            "b": jax.numpy.full(3, 2.0)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), 2, 1)
  ck.save(5, {"params": params, "step": jax.numpy.int32(5)}, {"pos": 5})
  ck.wait()
  ck.close()
  if source == "exported":
    ckpt_lib.export_params(str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints")
  fresh = {"blocks": {0: {"w": jax.numpy.zeros((2, 4)),
                          "xy": jax.numpy.ones((2, 2))}},
           "b": jax.numpy.zeros(3)}
  got, kept = ckpt_lib.load_params_partial(str(tmp_path), fresh)
  assert kept == ["['blocks'][0]['xy']"]
  np.testing.assert_array_equal(got["blocks"][0]["w"], params["blocks"][0]["w"])
  np.testing.assert_array_equal(got["b"], params["b"])
  np.testing.assert_array_equal(got["blocks"][0]["xy"], np.ones((2, 2)))
  with pytest.raises(ValueError, match=r"holds parameters this model lacks: "
                     r"\[\"\['b'\]\"\]"):
    ckpt_lib.load_params_partial(str(tmp_path), {"blocks": fresh["blocks"]})
  with pytest.raises(ValueError, match=r"\['b'\] is float32\[3\], the model's "
                     r"float32\[4\]"):
    ckpt_lib.load_params_partial(str(tmp_path), dict(fresh, b=jax.numpy.zeros(4)))
  if source == "exported":
    path = tmp_path / ckpt_lib.PARAMS_FILE
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
    arrays["['b']"] = arrays["['b']"] + 1
    np.savez(path, **arrays)
    with pytest.raises(ckpt_lib.CorruptCheckpoint, match="fingerprint"):
      ckpt_lib.load_params_partial(str(tmp_path), fresh)
