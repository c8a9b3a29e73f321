"""Mesh from config, logical-axis rules, and the one helper model code uses.

Model code names *logical* axes only:
  parameters:  embed, mlp, heads, kv, vocab, patch, pos
  activations: act_batch, act_len, act_embed, act_heads, act_mlp
The config maps them to mesh axes (data / fsdp / tensor) with `sharding_rules`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

_ACTIVE: contextvars.ContextVar[tuple[jax.sharding.Mesh, dict] | None] = (
    contextvars.ContextVar("r3jax_sharding", default=None))


@contextlib.contextmanager
def use_rules(mesh: jax.sharding.Mesh, rules: Rules):
  """Makes `constrain` active for code traced inside this context."""
  token = _ACTIVE.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    mesh: jax.sharding.Mesh, rules: dict) -> P:
  """Resolves logical names to a PartitionSpec, dropping mesh axes that do not
  divide the dimension (or are size 1) and never using a mesh axis twice."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    axes = rules.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, size = [], 1
    for a in axes:
      n = mesh.shape[a]
      if a in used or n == 1 or dim % (size * n):
        continue
      kept.append(a)
      size *= n
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; no-op without rules."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(names, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def make_mesh(axes: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Mesh with axes data / fsdp / tensor (Auto axis types) over `devices`.

  One axis may be -1 (takes the remaining devices); the product must use every
  device, so a mesh that does not fit the hardware fails here, not later.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
  shape = {a: int(axes.get(a, 1)) for a in MESH_AXES}
  known = math.prod(s for s in shape.values() if s != -1)
  if any(s == 0 or s < -1 for s in shape.values()):
    raise ValueError(f"mesh sizes must be positive or -1, got {dict(axes)}")
  for a, s in shape.items():
    if s == -1:
      if n % known:
        raise ValueError(f"mesh {dict(axes)} does not fit {n} devices: "
                         f"{n} is not divisible by {known}")
      shape[a] = n // known
  if math.prod(shape.values()) != n:
    raise ValueError(f"mesh {shape} needs {math.prod(shape.values())} devices "
                     f"but {n} are available")
  arr = np.asarray(devices).reshape(tuple(shape.values()))
  return jax.sharding.Mesh(arr, MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedShardings for an abstract nnx.State from its logical-axis metadata."""
  rules = dict(rules)

  def one(var):
    value = var.get_value()
    names = var.get_metadata().get("out_sharding") or (None,) * value.ndim
    return NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules))

  return jax.tree.map(one, abstract_state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put(x: np.ndarray, shard: jax.sharding.Sharding) -> jax.Array:
  """A host array (the same on every process) as a global array placed per
  `shard`: each device takes its slice."""
  return jax.make_array_from_callback(x.shape, shard, lambda idx: x[idx])


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (example) dimension over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def _nbytes(x) -> int:
  return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def unsharded_large_params(params, min_bytes: int = 1 << 20) -> list[str]:
  """Paths of parameters of at least `min_bytes` that every device holds whole
  (arrays, or ShapeDtypeStructs carrying shardings)."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if _nbytes(x) >= min_bytes and x.sharding.is_fully_replicated and (
        len(x.sharding.device_set) > 1):
      out.append(jax.tree_util.keystr(path))
  return out


def bytes_per_device(tree) -> int:
  """Bytes one device holds of a tree of arrays or ShapeDtypeStructs sharded
  over the whole mesh: one shard of every leaf, before any layout padding."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) *
             np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
