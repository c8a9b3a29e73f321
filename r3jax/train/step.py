"""The jitted update: update(state, batch, *args) -> (state, measurements).

make_update writes everything around an update direction once: the sharding
rules, the optimizer, the measurements every step logs, frozen parameter
groups, the non-finite guard and state donation. The direction is what a
training mode changes:
  weighted_sum                  the plain objective sum_i w_i L_i (here);
  r3jax.interference.step       per-task gradients, their statistics and the
                                configured aggregation method;
  r3jax.r3.tree_rl              the GRPO objective of Tree-RL.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r3jax import sharding
from r3jax.train import losses as losses_lib
from r3jax.train import nonfinite as nonfinite_lib
from r3jax.train import optim
from r3jax.train.state import Setup, State


@dataclasses.dataclass
class Direction:
  """One step's direction, from direction(state, batch, *args)."""
  grads: Any                     # shaped like the parameters; the optimizer
  loss: jax.Array                # takes it; the objective, logged as "loss"
  metrics: dict[str, jax.Array]  # more measurements of the step
  aux: dict | None = None        # new entries of state["aux"]
  # updates -> measurements of the update the optimizer made
  after: Callable[[Any], dict[str, jax.Array]] | None = None


@dataclasses.dataclass(frozen=True)
class Update:
  """A compiled step, fn(state, batch, schedule, *args), with its
  learning-rate schedule (r3jax.train.optim.Schedule) bound: called, and
  lowered, as update(state, batch, *args). The schedule is an argument, not
  a constant of the program, so runs that differ only in their schedule
  share one compilation. It is placed on the devices (`sharding`) at the
  first call, so lowering alone works on compile-only devices."""
  fn: Any
  schedule: optim.Schedule
  sharding: jax.sharding.Sharding

  @functools.cached_property
  def _placed(self):
    return jax.device_put(self.schedule, self.sharding)

  @property
  def abstract_schedule(self):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype, sharding=self.sharding), self.schedule)

  def __call__(self, state, batch, *args):
    return self.fn(state, batch, self._placed, *args)

  def lower(self, state, batch, *args):
    return self.fn.lower(state, batch, self.abstract_schedule, *args)

  def compile(self, state, batch, *args) -> Update:
    """This step compiled now for these arguments (or their shapes)."""
    return dataclasses.replace(self,
                               fn=self.lower(state, batch, *args).compile())


def bind(fn, setup: Setup, schedule: optim.Schedule) -> Update:
  """`fn` jitted, with the schedule replicated on the setup's mesh."""
  return Update(fn, schedule, sharding.replicated(setup.mesh))


def make_update(setup: Setup, direction: Callable[..., Direction],
                schedule: optim.Schedule, *, nonfinite: str = "stop",
                frozen: tuple[str, ...] = ()) -> Update:
  """Compiled step with donated state and explicit shardings.

  Measurements are device scalars: the direction's loss and metrics, and
  grad / param / update norms and the learning rate. The top-level parameter
  groups in `frozen` get zero gradient and zero update. `nonfinite="skip"`
  drops non-finite updates in-graph (r3jax.train.nonfinite).
  """
  if nonfinite not in nonfinite_lib.MODES:
    raise ValueError(f"nonfinite must be one of {nonfinite_lib.MODES}, got "
                     f"{nonfinite!r}")
  frozen = set(frozen)

  def unfrozen(tree):
    if not frozen:
      return tree
    return {k: jax.tree.map(jnp.zeros_like, v) if k in frozen else v
            for k, v in tree.items()}

  def update(state: State, batch, schedule, *args):
    with sharding.use_rules(setup.mesh, setup.rules):
      d = direction(state, batch, *args)
      grads = unfrozen(d.grads)
      updates, opt = setup.tx.update(grads, state["opt"], state["params"])
      updates = unfrozen(optim.apply(schedule, state["step"], updates))
      params = optax.apply_updates(state["params"], updates)
    m = {**d.metrics, "loss": d.loss, "grad_norm": optax.tree.norm(grads),
         "param_norm": optax.tree.norm(params),
         "update_norm": optax.tree.norm(updates),
         "lr": optim.learning_rate(schedule, state["step"])}
    if d.after is not None:
      m.update(d.after(updates))
    new = {**state, "step": state["step"] + 1, "params": params, "opt": opt}
    if d.aux is not None:
      new["aux"] = {**state["aux"], **d.aux}
    if nonfinite == "skip":
      return nonfinite_lib.guard(state, new, m)
    return new, m

  repl = sharding.replicated(setup.mesh)
  return bind(jax.jit(update, donate_argnums=(0,),
                      out_shardings=(setup.shardings, repl)), setup, schedule)


def task_metrics(losses: Mapping[str, jax.Array],
                 accs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """loss/<task> and token_acc/<task>."""
  return {**{f"loss/{k}": v for k, v in losses.items()},
          **{f"token_acc/{k}": v for k, v in accs.items()}}


def weighted_sum(setup: Setup, weights: Mapping[str, float],
                 layout: str = "split"):
  """The plain direction: the gradient of sum_i w_i L_i (layout "shared":
  one trunk forward and one backward, r3jax.train.losses.shared_joint)."""
  weights = dict(weights)

  def direction(state: State, batch) -> Direction:
    if layout == "shared":
      total, losses, accs, grads = losses_lib.shared_joint(
          setup.model, state["params"], batch, weights)
    else:
      def loss_fn(params):
        losses, accs = losses_lib.task_losses(setup.model(params), batch)
        return losses_lib.weighted_total(losses, weights), (losses, accs)

      (total, (losses, accs)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state["params"])
    return Direction(grads, total, task_metrics(losses, accs))

  return direction
