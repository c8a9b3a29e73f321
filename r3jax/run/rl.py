"""R3-RL's run: Tree-RL's alternating root and branch steps
(r3jax.r3.tree_rl.TreeRL) to config.total_steps, as the producer of the
training loop every run shares (r3jax.run.loop.run_steps: its checkpoints,
pre-emption, logging and evaluation)."""

from __future__ import annotations

import os
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
from r3jax.train import optim


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """R3-RL to config.total_steps (resuming from `workdir`), then evaluation.

  Step n is TreeRL.step(state, ref_params, n - 1), whose measurements are
  checked before the next step starts. It starts from, and its KL reference
  is, the latest checkpoint of config.init_from, else a fresh initialisation
  (source.initial_state). In mode "tree" checkpoints follow branch steps
  only, so a stop signal during a root step takes effect after the branch
  step that completes the pair. Faults, logging and evaluation as in
  loop.run_steps; its rows carry no examples_per_sec.
  """
  os.makedirs(workdir, exist_ok=True)
  mesh, world, setup, init_state = loop_lib.build(config, devices)
  if jax.process_index() == 0:
    config_lib.dump(config, os.path.join(workdir, "config.json"))
  start = source.initial_state(config, setup, init_state)
  ref_params = jax.tree.map(jnp.copy, start["params"])
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_ckpts, config.ckpt_every_steps)
  restored = ckpt.restore_latest_intact(setup.abstract)
  state = start if restored is None else restored[1]
  rl = tree_rl.TreeRL(config, world, setup,
                      optim.schedule(config.optim, config.total_steps))
  tree = config.rl.mode == "tree"

  def step(state, step, log):
    log()  # the step before is checked before this one runs
    return rl.step(state, ref_params, step - 1)

  return loop_lib.run_steps(
      config, workdir, mesh, world, setup, ckpt, state, loop_lib.Producer(
          step, boundary=lambda step: not (tree and step % 2),
          where="RL step"))
