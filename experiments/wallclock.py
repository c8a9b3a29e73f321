"""Step times for equal wall-clock comparisons.

A method whose step is slower buys fewer updates in the same time. An arm
with `Arm.budget = "ref"` trains for the time the reference arm's steps take
with the plain (uninstrumented) weighted-sum step:

  steps = round(steps_ref * t_plain / t_arm)

where t is the median seconds per training step of each config, timed in one
process on the same batch, interleaved in rounds (in a new order each round)
so that drift in machine speed hits every config alike. Time it on an
otherwise idle machine: under load the ranking of close configs can change. The times are measured once per study root and
kept in <root>/<study>/step_seconds.json with the hardware; the steps each arm
then gets are written into its command, so the run is reproducible as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from r3jax.data import pipeline
from r3jax.run import loop


def plain(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the plain weighted-sum step (no per-task gradients)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.interference.enabled = False
  c.interference.method = "weighted_sum"
  return c


def step_seconds(configs: Mapping[str, ml_collections.ConfigDict],
                 steps: int = 10, rounds: int = 3, devices=None
                 ) -> dict[str, float]:
  """Median seconds per training step of each config (tasks they share have
  the same batch sizes), all timed on one batch drawn from the data of the
  config with the most tasks; each config takes its own tasks' part."""
  widest = max(configs.values(), key=lambda c: len(c.tasks))
  for name, c in configs.items():
    if not set(c.tasks) <= set(widest.tasks):
      raise ValueError(f"{name} trains {sorted(c.tasks)}, not a part of "
                       f"{sorted(widest.tasks)}: step times need one "
                       "config's tasks to include every other's")
  runs, batch = {}, None
  for name, c in configs.items():
    mesh, world, setup, init_state = loop.build(c, devices)
    if batch is None:
      data = pipeline.TrainData(world.train_source, world.tokenizer,
                                widest.tasks, widest.seed, mesh, 1, 1,
                                widest.data.layout, world.task_context())
      batch = next(data)
    update = loop.make_update(c, setup, world.make_model)
    runs[name] = [mesh, update, None, {k: batch[k] for k in c.tasks}]
    with jax.set_mesh(mesh):
      state, m = update(init_state(), runs[name][3])  # compiles
      jax.block_until_ready((state, m))
    runs[name][2] = state
  times: dict[str, list[float]] = {k: [] for k in runs}
  order = list(runs)
  for r in range(rounds):  # a new order each round: no config always first
    random.Random(r).shuffle(order)
    for name in order:
      run = runs[name]
      mesh, update, state, own = run
      with jax.set_mesh(mesh):
        for _ in range(steps):
          t0 = time.perf_counter()
          state, m = update(state, own)
          jax.block_until_ready((state, m))
          times[name].append(time.perf_counter() - t0)
      run[2] = state
  return {k: statistics.median(v) for k, v in times.items()}


def fingerprint(command: Sequence[str]) -> str:
  """What decides a config's step time: its command (config file and
  overrides) but the run length, the seed, the starting point and the
  workdir. The command, not the resolved config, so that a new setting with
  a default does not time every study again."""
  kept = [re.sub(r"([:,])seed=\d+", r"\1", a) for a in command
          if not a.startswith(("--workdir=", "--config.total_steps=",
                               "--config.init_from="))]
  return hashlib.sha256(" ".join(kept).encode()).hexdigest()[:16]


def load_or_measure(path: str, configs: Mapping[str, ml_collections.ConfigDict],
                    prints: Mapping[str, str], log=print, **kw
                    ) -> dict[str, Any]:
  """The step times kept at `path` when they were measured for these configs
  (same `prints`, the configs' fingerprints); otherwise all of them are timed
  again, together, and kept."""
  kept: dict[str, Any] = {}
  if os.path.exists(path):
    with open(path) as f:
      kept = json.load(f)
  prints = dict(prints)
  if any(kept.get("fingerprints", {}).get(k) != v for k, v in prints.items()):
    log(f"timing the training step of {sorted(configs)} for the equal "
        f"wall-clock arms ({path})")
    dev = jax.devices()[0]
    kept = {"seconds": step_seconds(configs, **kw), "fingerprints": prints,
            "hardware": {"device_kind": dev.device_kind,
                         "devices": jax.device_count(),
                         "cpus": os.cpu_count()}}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(kept, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
  return kept


def budget_steps(ref_steps: int, t_ref: float, t_arm: float) -> int:
  return max(1, round(ref_steps * t_ref / t_arm))
