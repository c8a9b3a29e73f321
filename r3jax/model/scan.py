"""Blocks stacked along a leading "layers" axis and run by jax.lax.scan.

With ModelConfig.scan_layers the encoder's and the decoder's `blocks` are each one
block module whose every parameter has a leading depth axis with the logical name
`LAYERS`. No sharding rule names it, so r3jax.sharding leaves that axis whole;
building under `nnx.logical_axis_rules` with eager sharding needs ("layers", None)
among the rules. Teacher forcing traces one block and scans it over the depth (the
remat policy applies to the scanned body), so the program and its compile time stop
growing with depth. Decode steps slice one layer at a time (`unstack`), so the KV
cache and the cross-attention k/v keep their per-layer list layout.

The stacked blocks are built from the same per-layer blocks, in the same order, as
the plain layout, so a given seed initialises both layouts alike. Parameter paths
differ only under `blocks`:

  plain:    decoder/blocks/<i>/self_attn/query/kernel    D x N x K
  scanned:  decoder/blocks/self_attn/query/kernel        depth x D x N x K

`pyloop_to_scan` / `scan_to_pyloop` convert parameter trees (nested dicts such as
`nnx.to_pure_dict(nnx.state(model))` or a train state's "params") between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from r3jax.model.config import REMAT_POLICIES
from r3jax.model.layers import maybe_remat

LAYERS = "layers"
M = TypeVar("M", bound=nnx.Module)
_PARTS = ("encoder", "decoder")


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def stack(blocks: Sequence[M]) -> M:
  """One module shaped like blocks[0] whose every variable stacks the blocks'
  along a new leading LAYERS axis. Run it with `apply` or `unstack` only: called
  directly, its layers would see stacked shapes."""
  graphdef, _ = nnx.split(blocks[0])
  states = [nnx.split(block)[1] for block in blocks]

  def one(*variables: nnx.Variable) -> nnx.Variable:
    meta = variables[0].get_metadata()
    if meta.get("out_sharding"):
      meta["out_sharding"] = (LAYERS, *meta["out_sharding"])
    # A new variable (not a copy) is sharded at creation under eager sharding.
    return type(variables[0])(jnp.stack([v.get_value() for v in variables]),
                              **meta)

  return nnx.merge(graphdef, jax.tree.map(one, *states, is_leaf=_is_var))


def _drop_layers_name(state: nnx.State) -> nnx.State:
  """One layer's variables carry the per-layer sharding names again."""

  def one(v: nnx.Variable) -> nnx.Variable:
    names = v.get_metadata().get("out_sharding")
    return v.copy(out_sharding=names[1:]) if names else v

  return jax.tree.map(one, state, is_leaf=_is_var)


def unstack(stacked: M) -> list[M]:
  """The per-layer modules of a stacked one (slices of its variables)."""
  graphdef, state = nnx.split(stacked)
  depth = jax.tree.leaves(state)[0].shape[0]
  return [nnx.merge(graphdef, _drop_layers_name(jax.tree.map(lambda x: x[i], state)))
          for i in range(depth)]


def apply(stacked: nnx.Module, x: jax.Array, *args: jax.Array,
          remat: str) -> jax.Array:
  """x through every layer in order (each also given `args`), by jax.lax.scan,
  with the named remat policy on the scanned body."""
  graphdef, state = nnx.split(stacked)

  def body(x: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, None]:
    return nnx.merge(graphdef, _drop_layers_name(layer_state))(x, *args), None

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
  return jax.lax.scan(body, x, state)[0]


def run_blocks(blocks: nnx.Module, x: jax.Array, *args: jax.Array, remat: str,
               scanned: bool) -> jax.Array:
  """x through the blocks of either layout under the remat policy."""
  if scanned:
    return apply(blocks, x, *args, remat=remat)
  step = maybe_remat(remat)
  for block in blocks:
    x = step(block, x, *args)
  return x


def layers(blocks: nnx.Module, scanned: bool) -> list[nnx.Module]:
  """The per-layer blocks of either layout."""
  return unstack(blocks) if scanned else list(blocks)


def _parts(params: Mapping) -> dict:
  """A copy of `params` down to each part's "blocks" (leaves shared)."""
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  out = dict(params)
  for part in _PARTS:
    if part not in out or "blocks" not in out[part]:
      raise ValueError(f"expected model parameters with {part}/blocks, got top "
                       f"level keys {sorted(map(str, params))}")
    out[part] = dict(out[part])
  return out


def _is_plain(blocks: Mapping) -> bool:
  return all(str(k).isdigit() for k in blocks)


def pyloop_to_scan(params: Mapping) -> dict:
  """Plain-layout parameters -> scanned layout (blocks {0: p0, 1: p1, ...} become
  one tree of depth-stacked arrays). The input is not modified."""
  out = _parts(params)
  for part in _PARTS:
    blocks = out[part]["blocks"]
    if not _is_plain(blocks):
      raise ValueError(f"{part}/blocks is not in the plain layout (keys "
                       f"{sorted(map(str, blocks))}); is it already scanned?")
    per_layer = [blocks[k] for k in sorted(blocks, key=int)]
    out[part]["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return out


def scan_to_pyloop(params: Mapping) -> dict:
  """Scanned-layout parameters -> plain layout ({0: p0, 1: p1, ...} per part,
  with int keys as nnx.to_pure_dict gives them). The input is not modified."""
  out = _parts(params)
  for part in _PARTS:
    stacked = out[part]["blocks"]
    if _is_plain(stacked):
      raise ValueError(f"{part}/blocks is already in the plain layout.")
    depth = jax.tree.leaves(stacked)[0].shape[0]
    out[part]["blocks"] = {
        i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)}
  return out
