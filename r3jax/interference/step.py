"""The instrumented update and the lookahead transference probe.

update(state, batch) -> (state, measurements), like the plain step
(r3jax.train.step.make_update), but the update direction is sum_i w_i g_i
with w from the configured aggregation method, and the measurements add the
interference statistics (r3jax/interference/gram.py), the applied task
weights and the update alignment. With
"weighted_sum" the update equals the plain step's (tests check it).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from r3jax import sharding
from r3jax.data import pipeline
from r3jax.interference import gram as gram_lib
from r3jax.interference import grads as grads_lib
from r3jax.interference import groups as groups_lib
from r3jax.interference import methods as methods_lib
from r3jax.train import optim
from r3jax.train import step as step_lib


class Instrument:
  """What the step needs from the interference config, resolved once."""

  def __init__(self, cfg: ml_collections.ConfigDict, params_abstract,
               weights: Mapping[str, float], layout: str):
    self.tasks = tuple(sorted(weights))
    self.base_T = jnp.asarray([weights[t] for t in self.tasks], jnp.float32)
    self.layout = layout
    pipeline.check_layout(layout)
    self.halves = bool(cfg.halves) and layout == "split"
    if cfg.halves and layout == "shared":
      raise ValueError("config.interference.halves needs config.data.layout="
                       "'split' (the noise floor uses disjoint half batches)")
    self.group_stats = bool(cfg.group_stats)
    self.thresholds = tuple(float(s) for s in cfg.thresholds)
    self.leaf_groups, self.group_names = groups_lib.assign(
        params_abstract, [tuple(r) for r in cfg.groups])
    self.method = methods_lib.make(cfg.method, **dict(cfg.method_args))
    if getattr(self.method, "ub", False) and layout != "shared":
      raise ValueError(f"method {cfg.method!r} with ub=True uses gradients at "
                       "the shared features: set config.data.layout='shared'")

  def init_state(self):
    return self.method.init(len(self.tasks), len(self.group_names))

  def task_grads(self, model_fn, params, batch) -> grads_lib.TaskGrads:
    batch = {t: batch[t] for t in self.tasks}
    if self.layout == "shared":
      return grads_lib.shared(model_fn, params, batch)
    return grads_lib.split(model_fn, params, batch, halves=self.halves)

  def grams(self, tg: grads_lib.TaskGrads):
    """(task Grams G x T x T, half-batch Gram 2T x 2T or None)."""
    n = len(self.group_names)
    if tg.halves is None:
      return gram_lib.group_grams(tg.grads, self.leaf_groups, n), None
    halves = gram_lib.group_grams(tg.halves, self.leaf_groups, n)
    return gram_lib.combine_halves(halves, tg.frac_a), halves.sum(0)

  def aggregate(self, grads_T, weights):
    """sum_i w_i g_i, with per-group weights when w is G x T."""
    leaves_T = [jax.tree.leaves(g) for g in grads_T]
    treedef = jax.tree.structure(grads_T[0])
    out = []
    for k, g in enumerate(self.leaf_groups):
      w_T = weights[g] if weights.ndim == 2 else weights
      out.append(sum(w_T[i].astype(leaves[k].dtype) * leaves[k]
                     for i, leaves in enumerate(leaves_T)))
    return jax.tree.unflatten(treedef, out)


def make_update(setup, instrument: Instrument, schedule, seed: int,
                nonfinite: str = "stop"):
  """The instrumented step (r3jax.train.step.make_update around
  `direction`); `nonfinite="skip"` keeps the state when the loss, gradient
  or update is non-finite (r3jax.train.nonfinite.guard)."""
  return step_lib.make_update(setup, direction(setup, instrument, seed),
                              schedule, nonfinite=nonfinite)


def direction(setup, instrument: Instrument, seed: int):
  """The update direction sum_i w_i g_i (w from the aggregation method, or
  the method's own direction) with the interference statistics."""
  tasks = instrument.tasks
  base = dict(zip(tasks, instrument.base_T))
  base_key = jax.random.key(seed)
  edits = methods_lib.edits_gradients(instrument.method)

  def fn(state, batch) -> step_lib.Direction:
    params = state["params"]
    tg = instrument.task_grads(setup.model, params, batch)
    grams_GxTxT, halves_KxK = instrument.grams(tg)
    gram_TxT = grams_GxTxT.sum(0)
    feature_gram = None
    if tg.feature_grads is not None:
      f = [x.astype(jnp.float32) for x in tg.feature_grads]
      feature_gram = jnp.stack([jnp.stack([jnp.sum(a * b) for b in f])
                                for a in f])
    inputs = methods_lib.Inputs(
        gram_TxT=gram_TxT, grams_GxTxT=grams_GxTxT,
        group_names=instrument.group_names,
        losses_T=jnp.stack(tg.losses), base_weights_T=instrument.base_T,
        key=jax.random.fold_in(base_key, state["step"]), step=state["step"],
        feature_gram_TxT=feature_gram,
        grads_T=tuple(tg.grads) if edits else None)
    out, method_state, extra = instrument.method(
        inputs, state["aux"]["method"] if "aux" in state
        else instrument.init_state())
    if edits:  # the method's own direction; no weights to log
      grads, weights = out, None
    else:
      weights = out.astype(jnp.float32)
      grads = instrument.aggregate(tg.grads, weights)

    m = step_lib.task_metrics(dict(zip(tasks, tg.losses)),
                              dict(zip(tasks, tg.accs)))
    if weights is not None:
      for i, t in enumerate(tasks):
        m[f"weights/{t}"] = (weights[:, i].mean() if weights.ndim == 2
                             else weights[i])
    if weights is not None and weights.ndim == 2:
      for g, name in enumerate(instrument.group_names):
        for i, t in enumerate(tasks):
          m[f"group/{name}/weight/{t}"] = weights[g, i]
    m.update({f"method/{k}": v for k, v in extra.items()})
    if len(tasks) > 1:
      if instrument.group_stats:
        m.update(gram_lib.statistics(grams_GxTxT, instrument.group_names,
                                     tasks, instrument.thresholds))
      else:
        m.update(gram_lib.statistics(gram_TxT[None], ("all",), tasks,
                                     instrument.thresholds))
        m = {k: v for k, v in m.items() if not k.startswith("group/")}
      if halves_KxK is not None:
        m.update(gram_lib.null_statistics(halves_KxK, gram_TxT, tasks))
    return step_lib.Direction(
        grads, sum(base[t] * l for t, l in zip(tasks, tg.losses)), m,
        aux={"method": method_state} if "aux" in state else None,
        after=lambda updates: gram_lib.alignment(tg.grads, updates, gram_TxT,
                                                 tasks))

  return fn


def make_probe(setup, instrument: Instrument, schedule: optim.Schedule):
  """Lookahead transference (Fifty et al. 2021): for each task i, the update
  the optimizer would take on task i alone, then every task's loss on the same
  batch after it. transfer/i->j = 1 - L_j(after step on i) / L_j(before);
  > 0: a step on i helps j. Costs T gradients and T x T forwards, so it runs on
  a cadence (config.interference.probe_every), not every step."""
  tasks = instrument.tasks

  def probe(state, batch, schedule):
    params = state["params"]
    with sharding.use_rules(setup.mesh, setup.rules):
      tg = grads_lib.split(setup.model, params, {t: batch[t] for t in tasks})
      m = {}
      for i, ti in enumerate(tasks):
        u, _ = setup.tx.update(
            jax.tree.map(lambda g: instrument.base_T[i] * g, tg.grads[i]),
            state["opt"], params)
        u = optim.apply(schedule, state["step"], u)
        ahead = optax.apply_updates(params, u)
        for j, tj in enumerate(tasks):
          after, _ = grads_lib.task_loss(setup.model, batch[tj], tj)(ahead)
          m[f"transfer/{ti}->{tj}"] = 1 - after / jnp.maximum(tg.losses[j],
                                                              1e-12)
    return m

  return step_lib.bind(jax.jit(
      probe, out_shardings=sharding.replicated(setup.mesh)), setup, schedule)
