"""train_and_evaluate(config, workdir): the whole run, resumable at any point;
run_steps: its training loop, which R3-RL's run (r3jax.run.rl) shares."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import ml_collections
from jax.experimental import multihost_utils

from r3jax import config as config_lib
from r3jax import report
from r3jax import sharding
from r3jax.data import pipeline
from r3jax.data import tasks as tasks_lib
from r3jax.interference import step as interference_step
from r3jax.r3 import drafts as r3_drafts
from r3jax.r3 import loop as r3_loop
from r3jax.train import checkpoint as ckpt_lib
from r3jax.train import metrics as metrics_lib
from r3jax.train import nonfinite as nonfinite_lib
from r3jax.train import optim
from r3jax.train import preemption
from r3jax.train import state as state_lib
from r3jax.train import step as step_lib
from r3jax.run import real_setup
from r3jax.run import source
from r3jax.run import world_setup


def build(config: ml_collections.ConfigDict,
          devices: Sequence[jax.Device] | None = None):
  """Everything a run or an evaluation needs, from the config alone."""
  config_lib.validate(config)
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  config_lib.check_devices(config, len(devices or jax.devices()),
                           jax.process_count())
  mesh = sharding.make_mesh(config.mesh, devices)
  world = load_source(config)
  setup, init_state = make_setup(config, mesh, world.make_model)
  return mesh, world, setup, init_state


def make_setup(config: ml_collections.ConfigDict, mesh, make_model,
               instrument: interference_step.Instrument | None = None):
  """(Setup, init_state) of `make_model`'s train state on `mesh`: the
  configured optimizer and the aggregation method's state (of `instrument`,
  default make_instrument's)."""
  if instrument is None:
    instrument = make_instrument(config, make_model)
  tx = optim.make(config.optim)
  return state_lib.create(
      make_model, tx, mesh, config.sharding_rules, config.seed,
      aux_init=instrument.init_state if instrument else None)


def load_source(config: ml_collections.ConfigDict) -> source.Source:
  """The run's data source (config.data.source), built if missing."""
  if config.data.source == "world":
    return world_setup.load(config)
  return real_setup.load(config)


def make_instrument(config: ml_collections.ConfigDict, make_model
                    ) -> interference_step.Instrument | None:
  if not config.interference.enabled:
    if config.interference.method != "weighted_sum":
      raise ValueError(f"config.interference.method="
                       f"{config.interference.method!r} needs "
                       "config.interference.enabled=True")
    return None
  return interference_step.Instrument(
      config.interference, state_lib.abstract_params(make_model),
      {k: t.weight for k, t in config.tasks.items()}, config.data.layout)


def make_update(config: ml_collections.ConfigDict, setup, make_model,
                instrument: interference_step.Instrument | None = None):
  """The configured training step (plain or instrumented); `instrument`
  defaults to make_instrument(config, make_model)."""
  if instrument is None:
    instrument = make_instrument(config, make_model)
  schedule = optim.schedule(config.optim, config.total_steps)
  if instrument is not None:
    return interference_step.make_update(setup, instrument, schedule,
                                         config.seed, config.nonfinite)
  return step_lib.make_update(
      setup, step_lib.weighted_sum(
          setup, {k: t.weight for k, t in config.tasks.items()},
          config.data.layout), schedule, nonfinite=config.nonfinite)


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops log rows past `step`, and a last row cut short by a killed run:
  a resumed run rewrites them identically."""
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() or not os.path.exists(path):
    return
  rows = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= step:
          rows.append(line)
      except json.JSONDecodeError:  # only the last line can be cut short
        pass
  with open(path + ".tmp", "w") as f:
    f.writelines(rows)
  os.replace(path + ".tmp", path)


def _compiled_together(fn, *args):
  """`fn` compiled for `args`; with several processes, returned only once
  every process has compiled it. XLA's CPU collectives (gloo) give a peer
  30 s to join the first collective, and one process may compile that much
  slower than another on a loaded machine."""
  if jax.process_count() == 1:
    return fn
  compiled = fn.compile(*args)
  multihost_utils.sync_global_devices("r3jax: train step compiled")
  return compiled


def _draft_store(config, workdir: str) -> r3_drafts.DraftStore | None:
  tasks = [t for t in ("reflect", "refine", "refine_direct", "ground")
           if t in config.tasks]
  if not tasks or not config.r3.onpolicy_every:
    return None
  return r3_drafts.DraftStore(
      os.path.join(workdir, "drafts"), config.r3.onpolicy_every,
      config.r3.onpolicy_frac,
      # Batches formatted ahead: the prefetch buffer plus one per thread.
      config.data.prefetch + config.data.read_threads + 1,
      # Stream indices count images: a grouped task's rows per image apart.
      {t: config.tasks[t].batch_size // (config.tasks[t].per_image if
                                         tasks_lib.TASKS[t].grouped else 1)
       for t in tasks}, config.seed)


def _refresh_drafts(drafts, w, config, world, loop, params) -> None:
  """The model's greedy captions for the selected examples of window w; with
  config.r3.onpolicy_reflections, refine's also carry the model's greedy
  reflection on that caption: [draft, reflection]; with
  config.r3.ground_refined, that share of ground's carry the model's whole
  round when it edits: [draft, reflection, refined caption]."""
  out = {}
  for task, idx in drafts.wanted(w).items():
    stream = pipeline.stream(pipeline.task_source(world.train_source, task),
                             task, config.seed)
    records = [stream[j] for j in idx]
    pick = []  # ground's examples that take the model's whole round
    if task == "ground" and config.r3.ground_refined:
      pick = [k for k, j in enumerate(idx) if np.random.default_rng(
          [config.seed, 7, j]).random() < config.r3.ground_refined]
    rest = [k for k in range(len(idx)) if k not in set(pick)]
    texts = [None] * len(idx)
    if rest:
      for k, text in zip(rest, loop.captions(params, [records[k]
                                                      for k in rest])):
        texts[k] = text
    if pick:  # the round decodes the draft too (the same greedy caption)
      trajs, _ = loop.run(params, [records[k] for k in pick])
      for k, t in zip(pick, trajs):
        texts[k] = t.captions[0] if t.stopped else [  # an edit in round 1
            t.captions[0], t.reflections[0], t.captions[1]]
    if task == "refine" and config.r3.onpolicy_reflections and records:
      texts = [list(x) for x in zip(texts, loop.reflections(params, records,
                                                           texts))]
    out[task] = dict(zip(idx, texts))
  drafts.put(w, out)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None
                       ) -> dict[str, Any]:
  """Trains to config.total_steps on the data pipeline's batches, resuming
  from `workdir` if it holds a checkpoint, and returns the final evaluation
  (run_steps, whose faults it shares). Besides the update, a step runs the
  interference probe every config.interference.probe_every steps (before the
  update, on its batch) and refreshes the R3 tasks' on-policy drafts at the
  end of each config.r3.onpolicy_every window."""
  os.makedirs(workdir, exist_ok=True)
  mesh, world, setup, init_state = build(config, devices)
  instrument = make_instrument(config, world.make_model)
  if jax.process_index() == 0:
    config_lib.dump(config, os.path.join(workdir, "config.json"))
    if instrument is not None:  # the logged keys come sorted; keep the order
      with open(os.path.join(workdir, "interference.json"), "w") as f:
        json.dump({"tasks": instrument.tasks,
                   "groups": instrument.group_names}, f, indent=1)

  context = world.task_context()
  drafts = context["drafts"] = _draft_store(config, workdir)
  draft_loop = drafts and r3_loop.R3Loop(
      setup, world.tokenizer, world.world, rounds=1,
      batch_size=config.evals.batch_size,
      caption_len=config.tasks.caption.max_len,
      # Whole reflections (and rounds, for ground_refined): the R3 tasks'
      # length, not the caption's, or long instructions are cut short.
      r3_len=max(config.tasks[t].max_len for t in config.tasks
                 if t in ("caption", "reflect", "refine", "ground")))
  data = pipeline.TrainData(world.train_source, world.tokenizer, config.tasks,
                            config.seed, mesh, config.data.read_threads,
                            config.data.prefetch, config.data.layout, context)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_ckpts, config.ckpt_every_steps)
  restored = ckpt.restore_latest_intact(setup.abstract)
  if restored is not None:
    _, state, data_state = restored
    data.set_state(data_state)
  else:
    state = source.initial_state(config, setup, init_state)
  first = int(jax.device_get(state["step"]))

  update = make_update(config, setup, world.make_model, instrument)
  probe = None
  if instrument is not None and config.interference.probe_every > 0:
    probe = interference_step.make_probe(
        setup, instrument, optim.schedule(config.optim, config.total_steps))

  def step_fn(state, step, log):
    nonlocal update
    batch = next(data)
    if probe is not None and (step - 1) % config.interference.probe_every == 0:
      log()  # the state it probes is checked first
      log(step, probe(state, batch))
    if step == first + 1:
      update = _compiled_together(update, state, batch)
    return update(state, batch)

  def refresh(state, step, log):
    if drafts is not None and step % drafts.every == 0 and (
        not drafts.has(step // drafts.every)):
      log()  # nothing non-finite goes further
      _refresh_drafts(drafts, step // drafts.every, config, world,
                      draft_loop, state["params"])

  return run_steps(config, workdir, mesh, world, setup, ckpt, state, Producer(
      step_fn, refresh, data.get_state,
      examples_per_step=sum(t.batch_size for t in config.tasks.values())))


@dataclasses.dataclass
class Producer:
  """Where run_steps' steps come from. step(state, step, log) makes step
  `step` (counted from 1) -> (state, measurements); after(state, step, log)
  runs once that step's stop is decided, before its checkpoint. Both may call
  log() to have the measurements still pending fetched and checked first, and
  log(step, m) to write `m` at `step` after them. data_state() goes into each
  checkpoint beside the state; boundary(step) says whether the run may save
  or stop after `step`; examples_per_step (None: not logged) gives the
  throughput, and `where` names a step in a non-finite error."""
  step: Callable[..., tuple[Any, dict[str, Any]]]
  after: Callable[..., None] = lambda state, step, log: None
  data_state: Callable[[], dict[str, Any]] = dict
  boundary: Callable[[int], bool] = lambda step: True
  examples_per_step: int | None = None
  where: str = "step"


def run_steps(config: ml_collections.ConfigDict, workdir: str, mesh, world,
              setup, ckpt: ckpt_lib.Checkpointer, state, producer: Producer
              ) -> dict[str, Any]:
  """The training loop every run shares: `producer`'s steps from `state`
  (resumed at its step counter) to config.total_steps, then the final
  evaluation's metrics with train_seconds and eval_seconds; closes `ckpt`.
  Measurements are fetched one step late and checked before anything later
  is saved or evaluated; rows every config.log_every_steps, checkpoints (with
  producer.data_state()) every config.ckpt_every_steps, at the end and on a
  stop, evaluation every config.eval_every_steps.

  Faults: SIGTERM or SIGINT ends training after the step in progress (or the
  first producer.boundary after it), with a checkpoint of that step (every
  process stops at the same step), and raises preemption.Preempted; calling
  again resumes. A half-written or corrupt latest checkpoint is set aside and
  the run resumes from the one before (Checkpointer.restore_latest_intact). A
  non-finite loss or gradient raises FloatingPointError before anything of
  that step is saved, or with config.nonfinite="skip" leaves the state
  unchanged (nonfinite.py).
  """
  first = int(jax.device_get(state["step"]))
  _truncate_metrics(workdir, first)
  evaluator = world.evaluator(setup, config.evals)
  writer = metrics_lib.Writer(workdir)
  per_step = producer.examples_per_step
  last = config.total_steps

  bar = None
  if config.progress_bar and jax.process_index() == 0:
    from tqdm import tqdm
    bar = tqdm(total=config.total_steps, initial=first, unit="step",
               dynamic_ncols=True)
  pending = []  # [(step, measurements)], fetched one step late
  t0 = time.perf_counter()
  window = [t0, first]  # throughput over the steps since the last log row

  def finish(step, m):
    m = jax.device_get(m)
    nonfinite_lib.check(m, step, ckpt.latest_step(),
                        skip=config.nonfinite == "skip", where=producer.where)
    if step % config.log_every_steps == 0 or step == last:
      now = time.perf_counter()
      if per_step is not None:
        m["examples_per_sec"] = ((step - window[1]) * per_step /
                                 max(now - window[0], 1e-9))
      window[:] = [now, step]
      writer.write(step, m)
    if bar is not None:
      bar.update(1)
      postfix = {"loss": f"{m['loss']:.3f}"}
      if per_step is not None:
        rate = (bar.format_dict["rate"] or 0) * per_step
        postfix["ex_per_s"] = f"{rate:.0f}"
      bar.set_postfix(postfix, refresh=False)

  def log(step: int | None = None, m=None) -> None:
    """Checks (and logs) the pending measurements, then writes `m`."""
    if pending:
      finish(*pending.pop())
    if m is not None:
      writer.write(step, m)

  try:
    with jax.set_mesh(mesh), preemption.StopOnSignal() as signals:
      for step in range(first + 1, last + 1):
        state, m = producer.step(state, step, log)
        log()
        pending.append((step, m))
        boundary = producer.boundary(step)
        stop = signals.agreed() and boundary
        producer.after(state, step, log)
        save = boundary and (step % config.ckpt_every_steps == 0 or
                             step == last or stop)
        evaluate = step % config.eval_every_steps == 0 and step != last
        if save or evaluate:  # nothing non-finite goes further
          log()
        if save:
          ckpt.save(step, state, producer.data_state(),
                    force=step == last or stop)
        if stop:
          ckpt.wait()
          raise preemption.Preempted(step, signals.signal_name)
        if evaluate:
          scores = evaluator.run(state["params"])
          writer.write(step, {f"{config.evals.split}/{k}": v
                              for k, v in scores.items()})
          if jax.process_index() == 0:
            text = report.line(scores, step, config.evals.split)
            bar.write(text) if bar is not None else print(text, flush=True)
      log()
    ckpt.wait()
    train_seconds = time.perf_counter() - t0
    with jax.set_mesh(mesh):
      result = world.evaluator(setup, config.final_eval).run(
          state["params"], os.path.join(workdir, "r3_examples.jsonl"))
    writer.write(last, {f"{config.final_eval.split}/{k}": v
                        for k, v in result.items()})
    result["train_seconds"] = train_seconds
    result["eval_seconds"] = time.perf_counter() - t0 - train_seconds
    return result
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str = "test", step: int | None = None,
                        devices: Sequence[jax.Device] | None = None
                        ) -> dict[str, Any]:
  """Evaluates a run's checkpoint (default: latest) on `split`."""
  mesh, world, setup, _ = build(config, devices)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               config.keep_ckpts, config.ckpt_every_steps)
  try:
    state, _ = ckpt.restore(setup.abstract, step)
  finally:
    ckpt.close()
  eval_cfg = ml_collections.ConfigDict(config.final_eval.to_dict())
  eval_cfg.split = split
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    result = world.evaluator(setup, eval_cfg).run(state["params"])
  result["eval_seconds"] = time.perf_counter() - t0
  return result
