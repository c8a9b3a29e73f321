"""Train state built sharded from the start: shapes by eval_shape, then a jitted
init with out_shardings, so no device ever holds an unsharded copy.

The state crossing the jit boundary is a plain dict:
  {"step": int32[], "params": nested dict of arrays, "opt": optax state,
   "skipped": int32[] (steps whose update was dropped as non-finite,
   r3jax.train.nonfinite),
   "aux": {"method": aggregation-method state}  (only when there is some)}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from r3jax import sharding

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Setup:
  """The static half of a run: how to rebuild the model and where state lives."""
  graphdef: Any
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  rules: tuple
  shardings: State           # NamedShardings, same tree as the state
  abstract: State            # ShapeDtypeStructs carrying those shardings

  def model(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params)


def _abstract_model(make_model: Callable[[nnx.Rngs], nnx.Module]):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))


def abstract_params(make_model: Callable[[nnx.Rngs], nnx.Module]):
  """The parameter tree as ShapeDtypeStructs (nothing is allocated)."""
  return nnx.to_pure_dict(nnx.split(_abstract_model(make_model))[1])


def create(make_model: Callable[[nnx.Rngs], nnx.Module],
           tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
           rules, seed: int, aux_init: Callable[[], Any] | None = None
           ) -> tuple[Setup, Callable[[], State]]:
  """Returns the static setup and a function making a fresh, sharded state.

  `aux_init` makes small replicated extra state (e.g. an aggregation method's
  weights) kept under "aux"; none is kept when it makes no arrays.
  """
  graphdef, abs_vars = nnx.split(_abstract_model(make_model))
  param_sh = nnx.to_pure_dict(sharding.state_shardings(abs_vars, mesh, rules))
  abs_params = nnx.to_pure_dict(abs_vars)
  repl = sharding.replicated(mesh)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  abs_aux = jax.eval_shape(aux_init) if aux_init else {}
  if not jax.tree.leaves(abs_aux):
    aux_init = None
  opt_sh = optax.tree_map_params(
      tx, lambda _, s: s, abs_opt, param_sh,
      transform_non_params=lambda _: repl,
      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  shardings = {"step": repl, "params": param_sh, "opt": opt_sh,
               "skipped": repl}
  shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abs_params,
            "opt": abs_opt, "skipped": jax.ShapeDtypeStruct((), jnp.int32)}
  if aux_init:
    shardings["aux"] = {"method": jax.tree.map(lambda _: repl, abs_aux)}
    shapes["aux"] = {"method": abs_aux}
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      shapes, shardings)
  setup = Setup(graphdef, tx, mesh, tuple(map(tuple, rules)), shardings,
                abstract)

  def init():
    with nnx.use_eager_sharding(False):
      model = make_model(nnx.Rngs(jax.random.key(seed)))
    params = nnx.to_pure_dict(nnx.state(model))
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt": tx.init(params), "skipped": jnp.zeros((), jnp.int32)}
    if aux_init:
      state["aux"] = {"method": aux_init()}
    return state

  def make_state() -> State:
    with jax.set_mesh(mesh):
      return jax.jit(init, out_shardings=shardings)()

  return setup, make_state
