"""The jitted update: update(state, batch) -> (state, measurements)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from r3jax import sharding
from r3jax.interference import grads as grads_lib
from r3jax.interference import step as interference_step
from r3jax.train import losses as losses_lib
from r3jax.train import nonfinite as nonfinite_lib
from r3jax.train.state import Setup, State


def make_update(setup: Setup, weights: Mapping[str, float], schedule, *,
                layout: str = "split",
                instrument: interference_step.Instrument | None = None,
                seed: int = 0, nonfinite: str = "stop"):
  """Compiled step with donated state and explicit shardings.

  Measurements are device scalars: per-task loss and token accuracy, the
  weighted total, grad / param / update norms and the learning rate. With an
  `instrument` the step is r3jax.interference.step's: per-task gradients,
  interference statistics and the configured aggregation method.
  `nonfinite="skip"` drops non-finite updates in-graph (r3jax.train.nonfinite).
  """
  if nonfinite not in nonfinite_lib.MODES:
    raise ValueError(f"nonfinite must be one of {nonfinite_lib.MODES}, got "
                     f"{nonfinite!r}")
  if instrument is not None:
    return interference_step.make_update(setup, instrument, schedule, seed,
                                         nonfinite)
  weights = dict(weights)

  def update(state: State, batch):
    with sharding.use_rules(setup.mesh, setup.rules):
      def loss_fn(params):
        losses, accs = losses_lib.task_losses(setup.model(params), batch)
        return losses_lib.weighted_total(losses, weights), (losses, accs)

      if layout == "shared":
        total, losses, accs, grads = grads_lib.shared_joint(
            setup.model, state["params"], batch, weights)
      else:
        (total, (losses, accs)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state["params"])
      updates, opt = setup.tx.update(grads, state["opt"], state["params"])
      params = optax.apply_updates(state["params"], updates)
    m = {"loss": total, "grad_norm": optax.tree.norm(grads),
         "param_norm": optax.tree.norm(params),
         "update_norm": optax.tree.norm(updates),
         "lr": jnp.asarray(schedule(state["step"]), jnp.float32)}
    m.update({f"loss/{k}": v for k, v in losses.items()})
    m.update({f"token_acc/{k}": v for k, v in accs.items()})
    new = {**state, "step": state["step"] + 1, "params": params, "opt": opt}
    if nonfinite == "skip":
      return nonfinite_lib.guard(state, new, m)
    return new, m

  repl = sharding.replicated(setup.mesh)
  return jax.jit(update, donate_argnums=(0,),
                 out_shardings=(setup.shardings, repl))
