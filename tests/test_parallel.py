"""Sharded training on 8 devices: every mesh trains as one device does, runs
repeat bit for bit, large parameters are split, per-device state shrinks as
1/fsdp, and scripts/aot_compile.py reports what the compiler does."""

import os
import re

import jax
import numpy as np
import pytest
from conftest import aot_script, tiny_config

from r3jax import config as config_lib
from r3jax import sharding
from r3jax.data import pipeline
from r3jax.run import loop

STEPS = 3
MESHES = {"single": {}, "data": dict(data=8), "fsdp": dict(fsdp=8),
          "data_fsdp_tensor": dict(data=2, fsdp=2, tensor=2)}
# Every matrix of the tiny model (width 32, mlp 64, vocab 61) has >= 2 KiB;
# its biases, scales and the count scalars have <= 256 B.
MIN_BYTES = 1024
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(kind, **mesh):
  """"plain": the caption task alone through the plain step, the cheapest
  program to compile (the memory test compiles the same ones). "upgrad": the
  joint tiny config through the instrumented step (per-task gradients,
  interference statistics) and UPGrad's solver."""
  if kind == "plain":
    c = tiny_config(("caption",), **mesh)
    c.interference.enabled = False
    # Some gradient entries of this run are zero up to rounding (~1e-9), and
    # with eps=1e-8 Adam turns their summation-order noise, which sharding
    # changes, into steps of 1e-5; eps=1e-6 keeps such entries' steps small.
    c.optim.eps = 1e-6
  else:
    c = tiny_config(**mesh)
    c.interference.enabled, c.interference.method = True, "upgrad"
  return c


def _train(config, devices, steps=STEPS):
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


def _run(kind, mesh):
  devices = jax.devices()[:1] if mesh == "single" else jax.devices()
  return _train(_config(kind, **MESHES[mesh]), devices)


@pytest.fixture(scope="module")
def runs():
  """run(kind, mesh) -> (host state, measurements, live state), each run
  once: a kind's single-device run is the reference of all its meshes."""
  done = {}

  def run(kind, mesh):
    if (kind, mesh) not in done:
      done[kind, mesh] = _run(kind, mesh)
    return done[kind, mesh]
  return run


def _flat(tree):
  return {jax.tree_util.keystr(p): x
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _mesh_axes(params):
  axes = set()
  for x in jax.tree.leaves(params):
    for entry in x.sharding.spec:
      axes.update((entry,) if isinstance(entry, str) else entry or ())
  return axes


@pytest.mark.parametrize("kind,mesh,param_axes", [
    ("plain", "data", set()), ("plain", "fsdp", {"fsdp"}),
    ("upgrad", "data_fsdp_tensor", {"fsdp", "tensor"})])
def test_sharded_training_equals_single_device(runs, kind, mesh, param_axes):
  """Parameters, optimizer state and every measurement (losses, norms and,
  for UPGrad, every interference statistic) agree with one device after 3
  steps."""
  single, m1, _ = runs(kind, "single")
  sharded, mn, live = runs(kind, mesh)
  if kind == "upgrad":
    assert "group/enc/block0/cos/caption:vqa" in m1[0]
  # The parameters really are split over these axes (data: replicated).
  assert _mesh_axes(live["params"]) == param_axes
  flat1, flatn = _flat(single), _flat(sharded)
  assert flat1.keys() == flatn.keys()
  for path, a in flat1.items():
    np.testing.assert_allclose(a, flatn[path], atol=1e-5, rtol=1e-5,
                               err_msg=path)
  for a, b in zip(m1, mn, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # Learning happened (the update changed the loss), so equality is not vacuous.
  assert m1[-1]["loss"] < m1[0]["loss"]


@pytest.mark.parametrize("kind,mesh", [("plain", "single"),
                                       ("upgrad", "data_fsdp_tensor")])
def test_same_config_and_seed_repeat_bit_for_bit(runs, kind, mesh):
  first, m_first, _ = runs(kind, mesh)
  again, m_again, _ = _run(kind, mesh)
  a, b = _flat(first), _flat(again)
  assert a.keys() == b.keys()
  for path in a:
    assert (a[path].dtype, a[path].shape) == (b[path].dtype, b[path].shape)
    assert a[path].tobytes() == b[path].tobytes(), path
  for x, y in zip(m_first, m_again, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      assert np.asarray(x[k]).tobytes() == np.asarray(y[k]).tobytes(), k


def test_no_large_parameter_left_unsharded(runs):
  params = runs("plain", "fsdp")[2]["params"]
  large = [k for k, x in _flat(params).items() if x.nbytes >= MIN_BYTES]
  assert len(large) >= 20  # the threshold does select the model's matrices
  assert sharding.unsharded_large_params(params, MIN_BYTES) == []


def test_unsharded_check_names_what_the_rules_leave_whole():
  """Without the "embed" rule only tensor=2 splits parameters: the matrices
  with a heads or mlp dimension; the embeddings and the vocab head (61 rows do
  not split in 2) stay whole on every device."""
  c = tiny_config(fsdp=4, tensor=2)
  c.sharding_rules = [r for r in c.sharding_rules if r[0] != "embed"]
  _, _, setup, init = loop.build(c, jax.devices())
  params = init()["params"]
  expected = ["['decoder']['head']['kernel']", "['decoder']['pos_embed']",
              "['decoder']['tok_embed']",
              "['encoder']['patch_embed']['kernel']", "['encoder']['pos_embed']"]
  assert sorted(sharding.unsharded_large_params(params, MIN_BYTES)) == expected
  # The abstract state (what scripts/aot_compile.py checks) says the same.
  assert sorted(sharding.unsharded_large_params(
      setup.abstract["params"], MIN_BYTES)) == expected


@pytest.fixture(scope="module")
def fsdp_memory():
  """Per-device bytes of the compiled training step for fsdp = 1, 2, 4, 8."""
  rows = {}
  for n in (1, 2, 4, 8):
    c = _config("plain", fsdp=n)
    mesh, world, setup, _ = loop.build(c, jax.devices()[:n])
    batch = pipeline.abstract_batch(c.tasks, world.tokenizer,
                                    world.train_source[0], mesh,
                                    world.task_context())
    update = loop.make_update(c, setup, world.make_model)
    with jax.set_mesh(mesh):
      mem = update.lower(setup.abstract, batch).compile().memory_analysis()
    abstract = setup.abstract
    rows[n] = {
        "params+opt": sharding.bytes_per_device(
            {"params": abstract["params"], "opt": abstract["opt"]}),
        "state": sharding.bytes_per_device(abstract),
        "batch": sharding.bytes_per_device(batch),
        "schedule": sharding.bytes_per_device(update.abstract_schedule),
        "arguments": mem.argument_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
        "temp": mem.temp_size_in_bytes,
    }
  return rows


def test_params_and_optimizer_state_per_device_shrink_as_one_over_fsdp(
    fsdp_memory):
  """Counted from the shard shapes and cross-checked against the compiled
  step's arguments. Not exactly 1/N: the biases over heads / mlp / vocab
  (1.5% of the tiny model's params+opt) stay whole on every device, so
  fsdp=8 holds 1.11/8 of it."""
  whole = fsdp_memory[1]["params+opt"]
  for n, row in fsdp_memory.items():
    # What the executable takes per device is the state plus the batch slice
    # (and the schedule's scalars), and the new state reuses all of the
    # donated one.
    assert row["schedule"] == 7 * 4, n
    assert row["arguments"] == row["state"] + row["batch"] + row["schedule"], n
    assert row["aliased"] == row["state"], n
    assert whole / n <= row["params+opt"] <= 1.25 * whole / n, n


def test_abstract_batch_matches_the_pipeline():
  for layout in ("split", "shared"):
    c = tiny_config(data=2, fsdp=2, tensor=2)
    mesh, world, _, _ = loop.build(c, jax.devices())
    data = pipeline.TrainData(world.train_source, world.tokenizer, c.tasks,
                              c.seed, mesh, layout=layout,
                              context=world.task_context())
    real = next(data)
    abstract = pipeline.abstract_batch(c.tasks, world.tokenizer,
                                       world.train_source[0], mesh,
                                       world.task_context())
    describe = lambda t: jax.tree.map(  # noqa: E731
        lambda x: (x.shape, x.dtype, x.sharding), t)
    assert describe(real) == describe(abstract), layout


_LIGHT_CONFIG_FILE = '''
from r3jax import config as config_lib

def get_config(arg=None):
  c = config_lib.world_experiment("runlocal", ("caption",))
  c.interference.enabled = False
  c.optim.eps = 1e-6
  return c
'''


def test_aot_compile_without_data_gives_the_run_setup():
  """The script builds no dataset, yet its abstract state and batch are the
  run's (vocabulary from the world config = the one the build writes)."""
  aot = aot_script()
  c = tiny_config(fsdp=2, tensor=2, data=2)
  mesh, world, setup, _ = loop.build(c, jax.devices())
  step = aot.abstract_step(c, jax.devices())
  describe = lambda t: jax.tree.map(  # noqa: E731
      lambda x: (x.shape, x.dtype, x.sharding), t)
  assert describe(step.setup.abstract) == describe(setup.abstract)
  assert describe(step.batch) == describe(pipeline.abstract_batch(
      c.tasks, world.tokenizer, world.train_source[0], mesh,
      world.task_context()))


def test_aot_compile_reports_the_compiled_figures(fsdp_memory, runs,
                                                  tmp_path, capsys):
  aot = aot_script()
  config_file = tmp_path / "light.py"
  config_file.write_text(_LIGHT_CONFIG_FILE)
  common = ["--config", str(config_file), "--topology", "cpu:8",
            "--large-bytes", str(MIN_BYTES)]
  assert aot.main(common + ["--fsdp-table"]) == 0
  table = capsys.readouterr().out
  rows = [line.split() for line in table.splitlines()
          if re.match(r"\s*\d+\s", line)]
  assert [int(r[0]) for r in rows] == [1, 2, 4, 8]
  num = lambda s: int(s.replace(",", ""))  # noqa: E731
  whole = fsdp_memory[1]["params+opt"]
  for r in rows:
    want = fsdp_memory[int(r[0])]
    assert num(r[1]) == want["params+opt"]
    assert float(r[2]) == pytest.approx(want["params+opt"] / whole, abs=1e-4)
    assert num(r[4]) == want["arguments"] - want["batch"]
    assert num(r[5]) == want["temp"]
    assert r[7] == "0"  # large parameters left unsharded

  # One mesh in full (the parity test's program): data parallelism alone
  # leaves every parameter whole, and the report names the large ones.
  assert aot.main(common + ["--mesh", "data=8"]) == 0
  report = capsys.readouterr().out
  assert "mesh:     {'data': 8, 'fsdp': 1, 'tensor': 1}" in report
  assert "arguments - batch - state - schedule: 0 B" in report
  params = runs("plain", "data")[2]["params"]
  large = sorted(k for k, x in _flat(params).items() if x.nbytes >= MIN_BYTES)
  named = report.split("left unsharded: ")[1].split()
  assert named[0] == str(len(large)) and sorted(named[1:]) == large


def test_aot_compile_errors_are_one_line(monkeypatch):
  aot = aot_script()
  joint = os.path.join(_ROOT, "configs", "joint.py")
  with pytest.raises(SystemExit, match=r"^aot_compile: mesh \{'data': 3, "
                     r"'fsdp': 1, 'tensor': 1\} needs 3 devices but 8 are "
                     r"available$"):
    aot.main(["--config", joint, "--topology", "cpu:8", "--mesh", "data=3"])
  from jax.experimental import topologies

  def missing(*args, **kwargs):
    raise RuntimeError("JAX TPU support not installed; cannot generate TPU "
                       "topology.")
  monkeypatch.setattr(topologies, "get_topology_desc", missing)
  with pytest.raises(SystemExit, match=r"^aot_compile: --topology tpu:v5e:2x2 "
                     r"needs the TPU compiler libtpu, which is not installed; "
                     r".*pip install 'jax\[tpu\]==[^\n]*$"):
    aot.main(["--config", joint, "--topology", "tpu:v5e:2x2"])


def test_aot_state_table_on_cpu(tmp_path, capsys):
  """--state-table: the state's compiled bytes per device over fsdp = 1, 2,
  4, 8. CPU layouts have no tiles, so compiled = tiled = the shard shapes."""
  aot = aot_script()
  config_file = tmp_path / "light.py"
  config_file.write_text(_LIGHT_CONFIG_FILE)
  rows = aot.state_table(config_lib.from_file(str(config_file)),
                         jax.devices())
  assert [r["n"] for r in rows] == [1, 2, 4, 8]
  for r in rows:
    assert r["compiled"] == r["tiled"] == r["shards"] and r["padding"] == 0
  assert [r["shards"] for r in rows] == sorted(
      {r["shards"] for r in rows}, reverse=True)
  assert aot.main(["--config", str(config_file), "--topology", "cpu:8",
                   "--state-table"]) == 0
  out = capsys.readouterr().out
  assert f"   8 {rows[-1]['shards']:>15,} {rows[-1]['compiled']:>15,}" in out
