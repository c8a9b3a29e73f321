"""What a TPU pod would run, compiled on this host for two TPU slices
(scripts/aot_compile.py through libtpu's compile-only devices; no TPU):
the study model with data x fsdp and ViT-B/16 at 224 px with a 6-layer
decoder in bfloat16 with fsdp x tensor. Each compiles, leaves no large
parameter whole, fits the chip's memory, and its state's bytes per device
fall as 1/N over fsdp = N up to the compiler's tile padding.

`make test-tpu` runs these with libtpu (in .venv/libtpu); `make test` leaves
them out (marker `tpu`). Without libtpu they are skipped, unless
R3JAX_REQUIRE_TPU_COMPILER=1 (set by make test-tpu) makes that a failure.
"""

import functools
import os

import pytest

from configs import joint
from conftest import aot_script

# topology -> (chips, study mesh data x fsdp, ViT-B mesh fsdp x tensor)
TOPOLOGIES = {
    "v5e:2x2": (4, dict(data=2, fsdp=2), dict(fsdp=2, tensor=2)),
    "v5p:2x2x2": (8, dict(data=2, fsdp=4), dict(fsdp=4, tensor=2)),
}
pytestmark = pytest.mark.tpu


def _each_topology(test):
  """Parametrised over TOPOLOGIES, one xdist group each (make test-tpu
  compiles the two slices on two workers)."""
  params = [pytest.param(t, marks=pytest.mark.xdist_group(t))
            for t in TOPOLOGIES]
  return pytest.mark.parametrize("topology", params)(test)


@pytest.fixture(autouse=True, scope="module")
def _no_compilation_cache():
  """TPU executables compiled without a TPU client cannot be read back from
  the persistent cache: compile afresh, and write nothing there."""
  import jax  # noqa: PLC0415
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", before)


@functools.cache
def _devices(topology):
  try:
    return aot_script().devices_for("tpu:" + topology)
  except SystemExit as e:
    if os.environ.get("R3JAX_REQUIRE_TPU_COMPILER") == "1":
      raise AssertionError(str(e)) from None
    pytest.skip(f"no TPU compiler here: {e} (make test-tpu installs it)")


def _study():
  c = joint.get_config()  # as a study trains it: the instrumented step
  c.compilation_cache_dir = ""
  return c


def _vit_b16(batch: int = 16):
  """configs/joint.py with ViT-B/16 at 224 px and a 6 x 768 decoder in
  bfloat16 (parameters float32), `batch` examples per task."""
  c = joint.get_config()
  c.world.image_size = 224
  c.model.enc_overrides = {}  # update() would merge into joint's overrides
  c.model.update(encoder="B", patch_size=16, dec_width=768, dec_depth=6,
                 dec_heads=12, dec_mlp=3072, dtype="bfloat16")
  c.interference.enabled = False
  c.compilation_cache_dir = ""
  for t in c.tasks.values():
    t.batch_size = batch
  return c


MODELS = {"study": _study, "vit_b16": _vit_b16}


def _mesh(**axes):
  return {"data": 1, "fsdp": 1, "tensor": 1, **axes}


def _check_step(config, devices):
  aot = aot_script()
  step = aot.compile_step(config, devices)
  f = aot.figures(step)
  assert f["unsharded"] == []
  hbm = aot.hbm_bytes(devices[0])
  assert hbm is not None, devices[0].device_kind
  # Upper bound: arguments, outputs, temporaries and code all live at once.
  assert 0 < f["total"] <= hbm, (f["total"], hbm)
  assert f["params+opt"] < f["params+opt (whole)"]
  return f


@_each_topology
def test_study_model_step_compiles_and_fits(topology):
  devices = _devices(topology)
  n, study_mesh, _ = TOPOLOGIES[topology]
  assert len(devices) == n
  c = _study()
  c.mesh = _mesh(**study_mesh)
  f = _check_step(c, devices)
  whole = f["params+opt (whole)"]
  # fsdp splits the state (but for small leaves); data replicates it.
  assert f["params+opt"] <= whole / study_mesh["fsdp"] + 0.01 * whole


@_each_topology
def test_vit_b16_step_compiles_and_fits(topology):
  devices = _devices(topology)
  _, _, vit_mesh = TOPOLOGIES[topology]
  c = _vit_b16()
  c.mesh = _mesh(**vit_mesh)
  f = _check_step(c, devices)
  whole = f["params+opt (whole)"]
  assert whole > 1.5e9  # ~140M float32 parameters and Adam's two moments
  shards = vit_mesh["fsdp"] * vit_mesh["tensor"]
  assert f["params+opt"] <= whole / shards + 0.01 * whole


@_each_topology
@pytest.mark.parametrize("model", sorted(MODELS))
def test_state_bytes_fall_as_one_over_n_up_to_tile_padding(topology, model):
  """Over fsdp = 1, 2, 4, ...: the compiled argument bytes are exactly the
  shard shapes rounded up to the compiled layouts' tiles; the shards are
  1/N of the state but for the few small leaves no rule splits (<= 1% of
  it); and the compiled bytes fall with every doubling."""
  aot = aot_script()
  devices = _devices(topology)
  rows = {r["n"]: r for r in aot.state_table(MODELS[model](), devices)}
  assert sorted(rows) == [2**i for i in range(len(devices).bit_length())]
  whole = rows[1]["shards"]
  for n, r in rows.items():
    assert r["compiled"] == r["tiled"], (n, r)
    assert whole / n <= r["shards"] <= whole / n + 0.01 * whole, (n, r)
  compiled = [rows[n]["compiled"] for n in sorted(rows)]
  assert compiled == sorted(compiled, reverse=True)
  assert len(set(compiled)) == len(compiled)
