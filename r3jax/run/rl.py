"""R3-RL's run: Tree-RL's alternating root and branch steps
(r3jax.r3.tree_rl.TreeRL) to config.total_steps, with checkpoints,
pre-emption and evaluation as in the supervised loop (r3jax.run.loop)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from r3jax import config as config_lib
from r3jax.r3 import tree_rl
from r3jax.run import loop as loop_lib
from r3jax.run import source
from r3jax.train import checkpoint as ckpt_lib
from r3jax.train import metrics as metrics_lib
from r3jax.train import nonfinite as nonfinite_lib
from r3jax.train import optim
from r3jax.train import preemption


def _initial_params(config, setup, init_state):
  """The policy RL starts from (and the frozen KL reference): the latest
  checkpoint of config.init_from, else a fresh initialisation (with
  config.model.encoder_init's encoder)."""
  return source.initial_state(config, setup, init_state)


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """R3-RL to config.total_steps (resuming from `workdir`), then evaluation.

  Faults as in r3jax.run.loop.train_and_evaluate; a stop signal during a
  root step takes effect after the branch step that completes the pair.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh, world, setup, init_state = loop_lib.build(config, devices)
  if jax.process_index() == 0:
    config_lib.dump(config, os.path.join(workdir, "config.json"))
  start = _initial_params(config, setup, init_state)
  ref_params = jax.tree.map(jnp.copy, start["params"])
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_ckpts, 1)
  restored = ckpt.restore_latest_intact(setup.abstract)
  state = start if restored is None else restored[1]
  first = int(jax.device_get(state["step"]))
  loop_lib._truncate_metrics(workdir, first)
  rl = tree_rl.TreeRL(config, world, setup,
                      optim.schedule(config.optim, config.total_steps))
  writer = metrics_lib.Writer(workdir)
  evaluator = world.evaluator(setup, config.evals)
  t0 = time.perf_counter()
  try:
    with preemption.StopOnSignal() as signals:
      for step in range(first, config.total_steps):
        state, m = rl.step(state, ref_params, step)
        done = step + 1
        nonfinite_lib.check(m, done, ckpt.latest_step(),
                            skip=config.nonfinite == "skip", where="RL step")
        if done % config.log_every_steps == 0 or done == config.total_steps:
          writer.write(done, m)
        between = config.rl.mode == "tree" and done % 2
        stop = signals.agreed() and not between
        if not between and (done % config.ckpt_every_steps == 0 or
                            done == config.total_steps or stop):
          ckpt.save(done, state, {}, force=True)
        if stop:
          ckpt.wait()
          raise preemption.Preempted(done, signals.signal_name)
        if done % config.eval_every_steps == 0 and done != config.total_steps:
          with jax.set_mesh(mesh):
            writer.write(done, {f"{config.evals.split}/{k}": v for k, v in
                                evaluator.run(state["params"]).items()})
    ckpt.wait()
    train_seconds = time.perf_counter() - t0
    with jax.set_mesh(mesh):
      result = world.evaluator(setup, config.final_eval).run(
          state["params"], os.path.join(workdir, "r3_examples.jsonl"))
    writer.write(config.total_steps, {f"{config.final_eval.split}/{k}": v
                                      for k, v in result.items()})
    result["train_seconds"] = train_seconds
    return result
  finally:
    writer.close()
    ckpt.close()

