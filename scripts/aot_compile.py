"""Compiles the configured training step for a target topology, without the
hardware, and reports what one device will hold: out-of-memory and sharding
mistakes show up before a pod is booked.

  python scripts/aot_compile.py --config configs/joint.py --topology cpu:8
  python scripts/aot_compile.py --config configs/joint.py --topology cpu:8 \\
      --mesh data=2,fsdp=4
  python scripts/aot_compile.py --config configs/joint.py --topology cpu:8 \\
      --fsdp-table
  python scripts/aot_compile.py --config configs/joint.py --topology tpu:v5e:2x2 \\
      --state-table
  python scripts/aot_compile.py --config configs/joint.py --topology tpu:v5e:2x2
  python scripts/aot_compile.py --config configs/joint.py --topology tpu:v5p:2x2x2

--topology cpu:N compiles for N fake CPU devices; tpu:NAME compiles for a TPU
slice through jax.experimental.topologies (needs libtpu, not a TPU). --mesh
replaces config.mesh (axes left out are 1). Nothing is allocated and no data
is read or generated on disk: the state is r3jax.train.state's abstract state
(ShapeDtypeStructs carrying their shardings), the vocabulary comes from the
world config (what the dataset build writes) and the batch shapes from
formatting one generated record. The step compiled is the run's own
(r3jax.run.loop.make_update: plain or instrumented, donated state).

Per-device figures come from the compiled executable's memory analysis
("total" counts arguments, outputs, temporaries and code as if all were live
at once, the donated state once; "peak" is XLA's own estimate, on TPU and
GPU). "params+opt" and "batch" are counted from the shard
shapes: on CPU the arguments are exactly state + batch; on TPU they are
larger by the tile padding of small arrays and thin shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from r3jax import config as config_lib
from r3jax import sharding
from r3jax.data import pipeline
from r3jax.data import world_tfds
from r3jax.data.tokenizer import WordTokenizer
from r3jax.model import Model
from r3jax.run import loop
from r3jax.train import state as state_lib
from r3jax.run import world_setup
from r3jax.world import generate_example

# By default parameters of 1 MiB or more must be split over some mesh axis.
LARGE_PARAM_BYTES = 1 << 20
# High-bandwidth memory per chip, by jax's device_kind (Cloud TPU docs).
HBM_BYTES = {"TPU v4": 32 << 30, "TPU v5 lite": 16 << 30, "TPU v5": 95 << 30,
             "TPU v5p": 95 << 30, "TPU v6 lite": 32 << 30}
# On a host with no TPU chips: skip libtpu's host discovery (it fails with a
# page of warnings), and let several compiling processes load libtpu at once.
NO_TPU_HOST = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-1",
               "TPU_WORKER_HOSTNAMES": "localhost",
               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4, 'tensor': 1}."""
  mesh = dict.fromkeys(sharding.MESH_AXES, 1)
  for item in filter(None, text.split(",")):
    axis, eq, size = item.partition("=")
    if not eq or axis.strip() not in mesh:
      raise SystemExit(f"aot_compile: --mesh wants axis=size over "
                       f"{sharding.MESH_AXES}, got {item!r}")
    mesh[axis.strip()] = int(size)
  return mesh


def devices_for(topology: str) -> list[jax.Device]:
  """The target's devices: cpu:N (fake host devices) or tpu:NAME (compile-only
  devices of a TPU topology, e.g. v5e:2x2)."""
  kind, _, rest = topology.partition(":")
  if kind == "cpu":
    n = int(rest or 1)
    try:  # only possible before JAX initialises its backends
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
      pass
    devices = jax.devices("cpu")
    if len(devices) < n:
      raise SystemExit(f"aot_compile: JAX already runs {len(devices)} CPU "
                       f"devices, fewer than the {n} of --topology {topology}")
    return devices[:n]
  if kind == "tpu":
    from jax.experimental import topologies  # noqa: PLC0415
    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
      for key, value in NO_TPU_HOST.items():  # a TPU VM keeps its own
        os.environ.setdefault(key, value)
    try:
      return list(topologies.get_topology_desc(rest, "tpu").devices)
    except RuntimeError as e:
      if "not installed" not in str(e):
        raise
      raise SystemExit(
          f"aot_compile: --topology {topology} needs the TPU compiler libtpu, "
          f"which is not installed; install it (no TPU needed) with: "
          f"pip install 'jax[tpu]=={jax.__version__}', or use make "
          f"tpu-check") from None
  raise SystemExit(f"aot_compile: --topology must be cpu:N or tpu:NAME, got "
                   f"{topology!r}")


@dataclasses.dataclass
class Step:
  """The configured training step and the abstract values it takes."""
  mesh: jax.sharding.Mesh
  setup: state_lib.Setup
  batch: Any
  update: Any
  executable: Any = None


def abstract_step(config: ml_collections.ConfigDict,
                  devices: Sequence[jax.Device]) -> Step:
  """r3jax.run.loop.build's setup and the run's update step, with abstract
  state and batch. Builds no dataset (build() does, to read the vocabulary
  it writes): the vocabulary comes from the world config instead."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  wcfg = world_setup.world_config(config)
  tokenizer = WordTokenizer.from_world(wcfg)
  mcfg = config_lib.model_config(config, tokenizer.vocab_size, wcfg.image_size)
  make_model = lambda rngs: Model(mcfg, rngs=rngs)  # noqa: E731
  world = world_setup.World(config, wcfg, None, tokenizer, None, make_model)
  instrument = loop.make_instrument(config, make_model)
  setup, _ = loop.make_setup(config, mesh, make_model, instrument)
  record = world_tfds.to_record(generate_example(wcfg, config.data.seed, 0), 0)
  batch = pipeline.abstract_batch(config.tasks, tokenizer, record, mesh,
                                  world.task_context())
  update = loop.make_update(config, setup, make_model, instrument)
  return Step(mesh, setup, batch, update)


def compile_step(config: ml_collections.ConfigDict,
                 devices: Sequence[jax.Device]) -> Step:
  step = abstract_step(config, devices)
  with jax.set_mesh(step.mesh):
    step.executable = step.update.lower(step.setup.abstract,
                                        step.batch).compile()
  return step


def figures(c: Step, large_bytes: int = LARGE_PARAM_BYTES
            ) -> dict[str, Any]:
  """Per-device bytes of the compiled step, and what the state alone needs."""
  mem = c.executable.memory_analysis()
  out = {
      "arguments": mem.argument_size_in_bytes,
      "outputs": mem.output_size_in_bytes,
      "aliased": mem.alias_size_in_bytes,  # outputs reusing donated inputs
      "temp": mem.temp_size_in_bytes,
      "code": mem.generated_code_size_in_bytes,
  }
  # Everything live at once, the donated state counted once: an upper bound.
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] +
                  out["temp"] + out["code"])
  # XLA's own estimate; the CPU backend's leaves out the temporaries.
  out["peak"] = (getattr(mem, "peak_memory_in_bytes", 0)
                 if c.mesh.devices.flat[0].platform != "cpu" else 0)
  abstract = c.setup.abstract
  out["params+opt"] = sharding.bytes_per_device(
      {"params": abstract["params"], "opt": abstract["opt"]})
  out["state"] = sharding.bytes_per_device(abstract)
  out["batch"] = sharding.bytes_per_device(c.batch)
  # The learning-rate schedule's constants (r3jax.train.optim.Schedule).
  out["schedule"] = sharding.bytes_per_device(c.update.abstract_schedule)
  out["params+opt (whole)"] = sum(
      math.prod(x.shape) * x.dtype.itemsize
      for x in jax.tree.leaves((abstract["params"], abstract["opt"])))
  cost = c.executable.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  out["flops"] = (cost or {}).get("flops")
  out["unsharded"] = sharding.unsharded_large_params(abstract["params"],
                                                     large_bytes)
  return out


def _tiled_bytes(fmt, aval) -> int:
  """Bytes of one device's shard of `aval` in the compiled layout `fmt`: the
  minor dimensions rounded up to the layout's (first-level) tile."""
  shape = fmt.sharding.shard_shape(aval.shape)
  dims = [shape[d] for d in fmt.layout.major_to_minor] or [1]
  tile = fmt.layout.tiling[0] if fmt.layout.tiling else ()
  for i, t in enumerate(reversed(tile), start=1):
    if i <= len(dims):
      dims[-i] = -(-dims[-i] // t) * t
  return math.prod(dims) * aval.dtype.itemsize


def state_layout(config: ml_collections.ConfigDict,
                 devices: Sequence[jax.Device]) -> dict[str, int]:
  """One device's bytes of the training state (parameters, optimizer state,
  counters) as the compiler lays it out, from a program that only takes the
  state and gives it back (seconds to compile, where the step takes
  minutes): "compiled" is XLA's argument size, "tiled" the same summed from
  the shard shapes and the compiled layouts, "shards" the shard shapes alone
  and "padding" = tiled - shards."""
  step = abstract_step(config, devices)
  state = step.setup.abstract
  with jax.set_mesh(step.mesh):
    compiled = jax.jit(lambda s: s, donate_argnums=0).lower(state).compile()
  formats = jax.tree.leaves(compiled.input_formats)
  avals = jax.tree.leaves(state)
  tiled = sum(map(_tiled_bytes, formats, avals))
  shards = sharding.bytes_per_device(state)
  return {"compiled": compiled.memory_analysis().argument_size_in_bytes,
          "tiled": tiled, "shards": shards, "padding": tiled - shards}


def hbm_bytes(device: jax.Device) -> int | None:
  """The chip's memory, for a TPU kind this script knows, else None."""
  return HBM_BYTES.get(device.device_kind) if device.platform == "tpu" else None


def fsdp_table(config: ml_collections.ConfigDict,
               devices: Sequence[jax.Device],
               large_bytes: int = LARGE_PARAM_BYTES) -> list[dict[str, Any]]:
  """Figures with config.mesh = fsdp=N, N = 1, 2, 4, ... up to the devices."""
  rows, n = [], 1
  while n <= len(devices):
    c = ml_collections.ConfigDict(config.to_dict())
    c.mesh = {"data": 1, "fsdp": n, "tensor": 1}
    rows.append({"n": n, **figures(compile_step(c, devices[:n]),
                                   large_bytes)})
    n *= 2
  return rows


def state_table(config: ml_collections.ConfigDict,
                devices: Sequence[jax.Device]) -> list[dict[str, Any]]:
  """state_layout with fsdp = 1, 2, 4, ... up to the devices (data = the
  rest, which replicates the state)."""
  rows, n = [], 1
  while n <= len(devices):
    c = ml_collections.ConfigDict(config.to_dict())
    c.mesh = {"data": len(devices) // n, "fsdp": n, "tensor": 1}
    rows.append({"n": n, **state_layout(c, devices)})
    n *= 2
  return rows


def _print_state_table(rows: list[dict]) -> None:
  base = rows[0]["compiled"]
  print("training state, bytes per device: shards from the shard shapes, "
        "compiled = XLA's argument size (the shards in the compiled "
        "layouts' tiles)")
  print(f"{'fsdp':>4} {'shards':>15} {'compiled':>15} {'padding':>8} "
        f"{'ratio to N=1':>12} {'1/N':>6}")
  for r in rows:
    print(f"{r['n']:>4} {r['shards']:>15,} {r['compiled']:>15,} "
          f"{r['padding'] / r['shards']:>8.1%} "
          f"{r['compiled'] / base:>12.4f} {1 / r['n']:>6.4f}")


def _size(b: int) -> str:
  return f"{b:>15,} B {b / 2**20:>10.2f} MiB"


def _print_hardware(topology: str, devices) -> None:
  d = devices[0]
  print(f"hardware: {len(devices)} x {d.platform} ({d.device_kind}), "
        f"--topology {topology}")


def _print_report(c: Step, f: dict, large_bytes: int) -> None:
  print(f"mesh:     {dict(c.mesh.shape)}")
  print("per device, from the compiled step's memory analysis:")
  for key in ("arguments", "outputs", "aliased", "temp", "code", "total"):
    print(f"  {key:<11}{_size(f[key])}")
  print(f"  {'peak':<11}" + (_size(f["peak"]) if f["peak"] else
                            "      no estimate for this backend"))
  hbm = hbm_bytes(c.mesh.devices.flat[0])
  if hbm:
    print(f"  {'HBM':<11}{_size(hbm)}   total fits: "
          f"{'yes' if f['total'] <= hbm else 'NO'}")
  print("per device, from the shard shapes:")
  print(f"  {'params+opt':<11}{_size(f['params+opt'])}   of "
        f"{f['params+opt (whole)'] / 2**20:.2f} MiB in all")
  print(f"  {'batch':<11}{_size(f['batch'])}")
  print("  arguments - batch - state - schedule: "
        f"{f['arguments'] - f['batch'] - f['state'] - f['schedule']:,} B")
  flops = f["flops"]
  print("flops per step, one device's program: " +
        ("not reported" if flops is None else f"{flops:.4g}"))
  print(f"large parameters (>= {large_bytes:,} B) left unsharded: "
        f"{len(f['unsharded'])}")
  for path in f["unsharded"]:
    print(f"  {path}")


def _print_table(rows: list[dict], large_bytes: int) -> None:
  base = rows[0]["params+opt"]
  print("bytes per device: params+opt from the shard shapes, the rest from "
        "the compiled step's memory analysis; unsharded large: parameters "
        f"of >= {large_bytes:,} B that every device holds whole")
  print(f"{'fsdp':>4} {'params+opt':>14} {'ratio to N=1':>12} {'1/N':>6} "
        f"{'args - batch':>14} {'temp':>14} {'total':>14} "
        f"{'unsharded large':>15}")
  for r in rows:
    print(f"{r['n']:>4} {r['params+opt']:>14,} {r['params+opt'] / base:>12.4f} "
          f"{1 / r['n']:>6.4f} {r['arguments'] - r['batch']:>14,} "
          f"{r['temp']:>14,} {r['total']:>14,} {len(r['unsharded']):>15}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="path.py[:arg]")
  parser.add_argument("--topology", required=True,
                      help="cpu:N or tpu:NAME (e.g. tpu:v5e:2x2)")
  parser.add_argument("--mesh", default="",
                      help="replaces config.mesh, e.g. data=2,fsdp=4")
  parser.add_argument("--large-bytes", type=int, default=LARGE_PARAM_BYTES,
                      help="parameters this large must be sharded")
  parser.add_argument("--fsdp-table", action="store_true",
                      help="params+opt bytes per device for fsdp = 1, 2, "
                      "4, ... (compiles the step for each)")
  parser.add_argument("--state-table", action="store_true",
                      help="the state's bytes per device as compiled, tile "
                      "padding included, for fsdp = 1, 2, 4, ... (seconds)")
  args = parser.parse_args(argv)
  try:
    config = config_lib.from_file(args.config)
  except ValueError as e:
    raise SystemExit(f"aot_compile: {e}") from None
  if args.mesh:
    config.mesh = parse_mesh(args.mesh)
  devices = devices_for(args.topology)
  _print_hardware(args.topology, devices)
  try:
    if args.state_table:
      _print_state_table(state_table(config, devices))
    elif args.fsdp_table:
      _print_table(fsdp_table(config, devices, args.large_bytes),
                   args.large_bytes)
    else:
      step = compile_step(config, devices)
      _print_report(step, figures(step, args.large_bytes), args.large_bytes)
  except ValueError as e:  # the config does not fit the topology
    raise SystemExit(f"aot_compile: {e}") from None
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise SystemExit(f"aot_compile: the step does not fit in device memory: "
                     f"{str(e).splitlines()[0]}") from None
  return 0


if __name__ == "__main__":
  sys.exit(main())
