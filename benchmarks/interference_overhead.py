"""Step-time overhead of measuring gradient interference, in one run.

Times, on the same hardware and the same batch, the median step of:
  plain          the plain step (one backward of the weighted sum), split layout
  split          the instrumented step: per-task gradients on their own
                 sub-batches + global and per-group Gram statistics + update
                 alignment (weighted_sum, so the update is the plain one)
  split_null     the same with the split-half noise floor (vmapped halves)
  shared_plain   the plain step on a shared-image batch (encoder run once)
  shared         the instrumented shared-input step (one trunk forward, trunk
                 backward vmapped over the task cotangents)
  method         the instrumented split step with an aggregation method
and prints name=value lines with ratio_split = split / plain, ratio_null,
ratio_shared = shared / shared_plain and ratio_method = method / plain.

  python benchmarks/interference_overhead.py [--method upgrad] [--steps 15]
      [--size default|S] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks import common  # noqa: E402
from r3jax import config as config_lib  # noqa: E402
from r3jax import sharding  # noqa: E402
from r3jax.interference import step as interference_step  # noqa: E402
from r3jax.model import Model  # noqa: E402
from r3jax.train import optim  # noqa: E402
from r3jax.train import state as state_lib  # noqa: E402
from r3jax.train import step as step_lib  # noqa: E402

VOCAB = 64


def _config(args):
  c = config_lib.defaults()
  if args.size == "S":
    c.model.encoder, c.model.patch_size = "S", 16
    c.model.enc_overrides = {}
    c.model.dec_width, c.model.dec_depth = 384, 6
    c.model.dec_heads, c.model.dec_mlp = 6, 1536
    c.world.image_size = 224
  for t in c.tasks.values():
    t.batch_size = args.batch
  c.model.dtype = args.dtype
  return c


def _variant(c, mesh, method=None, layout="split", halves=False,
             instrumented=True):
  c = c.copy_and_resolve_references()
  c.data.layout = layout
  c.interference.enabled = instrumented
  c.interference.halves = halves
  if method:
    c.interference.method = method
  mcfg = config_lib.model_config(c, VOCAB, c.world.image_size)
  make_model = lambda rngs: Model(mcfg, rngs=rngs)  # noqa: E731
  instrument = None
  if instrumented:
    instrument = interference_step.Instrument(
        c.interference, state_lib.abstract_params(make_model),
        {k: t.weight for k, t in c.tasks.items()}, layout)
  tx = optim.make(c.optim)
  setup, init = state_lib.create(
      make_model, tx, mesh, c.sharding_rules, 0,
      aux_init=instrument.init_state if instrument else None)
  schedule = optim.schedule(c.optim, c.total_steps)
  if instrument is not None:
    update = interference_step.make_update(setup, instrument, schedule, 0)
  else:
    update = step_lib.make_update(setup, step_lib.weighted_sum(
        setup, {k: t.weight for k, t in c.tasks.items()}, layout), schedule)
  return init, update


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method", default="upgrad")
  p.add_argument("--steps", type=int, default=15)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--size", default="default", choices=["default", "S"])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype", default="float32")
  args = p.parse_args()

  c = _config(args)
  mesh = sharding.make_mesh(c.mesh)
  to_dev = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))  # noqa
  split_batch = to_dev(common.random_batch(c, VOCAB, 0))
  shared_batch = to_dev(common.random_batch(c, VOCAB, 1, shared=True))
  variants = {
      "plain": (dict(instrumented=False), split_batch),
      "split": (dict(), split_batch),
      "split_null": (dict(halves=True), split_batch),
      "shared_plain": (dict(layout="shared", instrumented=False), shared_batch),
      "shared": (dict(layout="shared"), shared_batch),
      "method": (dict(method=args.method), split_batch),
  }
  times = {k: [] for k in variants}
  built = {}
  for name, (kw, batch) in variants.items():
    init, update = _variant(c, mesh, **kw)
    built[name] = (update, init(), batch)
  with jax.set_mesh(mesh):
    runs = {}
    for name, (update, state, batch) in built.items():
      t0 = time.perf_counter()
      state, m = update(state, batch)
      jax.block_until_ready(m)
      print(f"compile_s_{name}={time.perf_counter() - t0:.2f}")
      runs[name] = [update, state, batch]
    # Interleaved rounds so that drift in machine speed hits every variant.
    for _ in range(args.rounds):
      for name, run in runs.items():
        update, state, batch = run
        for _ in range(args.steps):
          t0 = time.perf_counter()
          state, m = update(state, batch)
          jax.block_until_ready((state, m))
          times[name].append(time.perf_counter() - t0)
        run[1] = state

  dev = jax.devices()[0]
  print(f"hardware={dev.platform}:{getattr(dev, 'device_kind', '?')} "
        f"x{jax.device_count()} host_cpus={os.cpu_count()} "
        f"({platform.processor() or platform.machine()})")
  params = sum(x.size for x in jax.tree.leaves(runs["plain"][1]["params"]))
  print(f"params={params} batch_per_task={args.batch} tasks={len(c.tasks)} "
        f"dtype={args.dtype} method={args.method}")
  med = {k: statistics.median(v) for k, v in times.items()}
  for k, v in med.items():
    print(f"median_ms_{k}={1e3 * v:.2f}")
  print(f"ratio_split={med['split'] / med['plain']:.3f}")
  print(f"ratio_null={med['split_null'] / med['plain']:.3f}")
  print(f"ratio_shared={med['shared'] / med['shared_plain']:.3f}")
  print(f"ratio_method={med['method'] / med['plain']:.3f}")
  print(f"ratio_method_vs_split={med['method'] / med['split']:.3f}")


if __name__ == "__main__":
  main()
