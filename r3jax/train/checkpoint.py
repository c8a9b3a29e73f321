"""Orbax checkpoints of {train state, data iterator state}: atomic, keep-N,
verified.

A save only becomes visible once complete (orbax writes a temporary directory
and renames it), so a run that dies mid-save still has its previous
checkpoint. Each checkpoint also stores a fingerprint of the state's bits (item
"integrity": one uint32 per array, and a hash of the data state); restoring
recomputes it, so a truncated or garbled array file, which orbax may read back
without an error, is caught.
`restore_latest_intact` resumes from the newest checkpoint that restores and
matches; newer ones that do not, and half-written temporary directories, are
reported and moved aside to `<directory>_bad/`, never deleted.

Everything on disk is JSON, zarr/OCDBT array data or plain text: loading a
checkpoint runs no code from it (no pickle).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

# Orbax's marker for a step directory still being written.
_TMP_MARKER = ".orbax-checkpoint-tmp"
# State entries newer than some checkpoints (those without an "integrity"
# item): restoring such a checkpoint fills them with zeros.
_ADDED_LATER = ("skipped",)


class CorruptCheckpoint(ValueError):
  """A checkpoint whose restored arrays differ from the fingerprint saved with
  them."""


def _mix(h):
  """murmur3's 32-bit finaliser: a bijection that spreads every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """sum_i mix(bits_i ^ golden * i) mod 2^32 over the flat index i: any change
  to one element changes it; the integer sum is exact, so the value does not
  depend on the sharding or the reduction order."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize == 8:  # two words per element: a trailing axis of 2
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, d) * (
        jnp.uint32(stride % 2**32))
    stride *= bits.shape[d]
  return jnp.sum(_mix(bits ^ (index * jnp.uint32(0x9E3779B9))),
                 dtype=jnp.uint32)


@functools.lru_cache(maxsize=None)
def _fingerprint_fn(out_sharding):
  return jax.jit(lambda state: jnp.stack([_leaf_fingerprint(x) for x in
                                          jax.tree.leaves(state)]),
                 out_shardings=out_sharding)


def fingerprint(state) -> dict[str, int]:
  """{path: uint32} of every array in `state`, computed where it lives."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0])
  sharding = leaves[0].sharding
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, P())
  values = jax.device_get(_fingerprint_fn(sharding)(state).addressable_data(0))
  return {jax.tree_util.keystr(p): int(v) for p, v in zip(paths, values)}


def _data_hash(data_state: Any) -> str:
  return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()
                        ).hexdigest()


def _zeros(a: jax.ShapeDtypeStruct) -> jax.Array:
  return jax.make_array_from_callback(
      a.shape, a.sharding, lambda index: np.zeros(a.shape, a.dtype)[index])


def _all_processes(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).min())


class Checkpointer:

  def __init__(self, directory: str, keep: int, every_steps: int):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True,
            enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state, data_state: dict[str, Any],
           force: bool = False) -> bool:
    if not force and not self._mngr.should_save(step):
      return False
    return self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        integrity=ocp.args.JsonSave({"fingerprint": fingerprint(state),
                                     "data": _data_hash(data_state)})),
        force=force)

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state) at `step` (default latest), placed per abstract_state.

    Raises CorruptCheckpoint when the restored state does not match the
    fingerprint saved with it (checkpoints without one are not checked).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError("no checkpoint to restore")
    checked = os.path.isdir(os.path.join(self.directory, str(step),
                                         "integrity"))
    missing = []
    if not checked and isinstance(abstract_state, dict):
      tree = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory) / str(step) / "state")
      missing = [k for k in _ADDED_LATER
                 if k in abstract_state and k not in tree.keys()]
    items = dict(state=ocp.args.StandardRestore(
        {k: v for k, v in abstract_state.items() if k not in missing}
        if missing else abstract_state), data=ocp.args.JsonRestore())
    if checked:
      items["integrity"] = ocp.args.JsonRestore()
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    for k in missing:
      out["state"][k] = jax.tree.map(_zeros, abstract_state[k])
    if checked:
      saved = out["integrity"]["fingerprint"]
      got = fingerprint(out["state"])
      bad = [k for k in saved if got.get(k) != saved[k]]
      if out["integrity"]["data"] != _data_hash(out["data"]):
        bad.append("the data state")
      if bad or saved.keys() != got.keys():
        raise CorruptCheckpoint(
            f"checkpoint at step {step} does not match the fingerprint saved "
            f"with it: {', '.join(bad[:4]) or 'the tree'}"
            f"{' and more' if len(bad) > 4 else ''}")
    return out["state"], out["data"]

  def restore_params(self, abstract_params, step: int | None = None):
    """The parameters alone of the checkpoint at `step` (default latest),
    placed per abstract_params and checked against the saved fingerprint: the
    run that wrote it may have had other optimizer, method or data state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    item = {"params": abstract_params}
    items = dict(state=ocp.args.PyTreeRestore(
        item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
    checked = os.path.isdir(os.path.join(self.directory, str(step),
                                         "integrity"))
    if checked:
      items["integrity"] = ocp.args.JsonRestore()
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    if checked:
      saved = out["integrity"]["fingerprint"]
      bad = [k for k, v in fingerprint(out["state"]).items() if saved.get(k) != v]
      if bad:
        raise CorruptCheckpoint(
            f"parameters of the checkpoint at step {step} in {self.directory} "
            f"do not match the fingerprint saved with them: {', '.join(bad[:4])}")
    return out["state"]["params"]

  def restore_latest_intact(self, abstract_state):
    """(step, state, data_state) of the newest checkpoint that restores intact,
    or None when there is no checkpoint.

    Half-written checkpoints (orbax temporary directories) and newer
    checkpoints that fail to restore are reported and moved aside, so the run
    saves those steps again. When no checkpoint restores, the newest one's
    error is raised and nothing is moved: that is a config no longer matching
    the checkpoints more often than every checkpoint being corrupt.
    """
    self._set_aside([(n, f"half-written checkpoint for step {n.split('.')[0]}")
                     for n in self._partial()])
    failed: list[tuple[int, Exception]] = []
    for step in sorted(self.all_steps(), reverse=True):
      error = None
      try:
        state, data_state = self.restore(abstract_state, step)
      except Exception as e:  # orbax and tensorstore raise bare Exceptions
        error = e
      if not _all_processes(error is None):
        error = error or RuntimeError("it failed to restore on another process")
        logging.warning("checkpoint at step %d does not restore (%s: %s); "
                        "trying the one before", step, type(error).__name__,
                        error)
        failed.append((step, error))
        continue
      self._set_aside([(str(bad), f"checkpoint at step {bad} is corrupt or "
                        f"unreadable ({type(e).__name__}: {str(e)[:300]})")
                       for bad, e in failed])
      return step, state, data_state
    if failed:
      raise failed[0][1]
    return None

  def _partial(self) -> list[str]:
    """Orbax temporary directories: saves that never completed. Every process
    lists them before any is moved."""
    names = [n for n in sorted(os.listdir(self.directory)) if _TMP_MARKER in n]
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("r3jax listed partial checkpoints")
    return names

  def _set_aside(self, entries: list[tuple[str, str]]) -> None:
    """Moves each (name, why) entry of the directory to <directory>_bad/,
    with a warning; process 0 moves, every process waits for it."""
    if not entries:
      return
    aside = self.directory + "_bad"
    for name, why in entries:
      if jax.process_index() != 0:
        logging.warning("%s; set aside by process 0", why)
        continue
      target = os.path.join(aside, name)
      n = 0
      while os.path.exists(target):
        n += 1
        target = os.path.join(aside, f"{name}-{n}")
      logging.warning("%s; moved to %s", why, target)
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, name), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("r3jax set checkpoints aside")
    self._mngr.reload()

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()


PARAMS_FILE = "params.npz"


def export_params(workdir: str) -> str:
  """Writes the parameters of `workdir`'s latest checkpoint to
  <workdir>/params.npz (one array per parameter path, and their fingerprint):
  small enough to keep in git, so that runs starting from this one
  (config.init_from) need not train it again on another machine."""
  params = _restore_as_saved(workdir)
  if params is None:
    raise FileNotFoundError(f"{workdir} holds no checkpoint to export")
  flat = {jax.tree_util.keystr(k): np.asarray(jax.device_get(v))
          for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  path = os.path.join(workdir, PARAMS_FILE)
  with open(path + ".tmp", "wb") as f:
    np.savez(f, __fingerprint__=json.dumps(fingerprint(params)), **flat)
  os.replace(path + ".tmp", path)
  return path


def _restore_as_saved(workdir: str):
  """The parameters of `workdir`'s latest checkpoint in the tree it saved
  (on one device, checked against their fingerprint), or None without one."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):  # (a Checkpointer would create it)
    return None
  ck = Checkpointer(directory, 1, 1)
  try:
    step = ck.latest_step()
    if step is None:
      return None
    meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(ck.directory) / str(step) / "state")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        _int_keys(meta["params"]), is_leaf=lambda m: hasattr(m, "shape"))
    return ck.restore_params(abstract, step)
  finally:
    ck.close()


def _int_keys(tree):
  """Orbax metadata names list entries "0", "1", ...; the model's parameter
  trees (nnx.to_pure_dict) use ints."""
  if not hasattr(tree, "keys"):
    return tree
  return {int(k) if str(k).isdigit() else k: _int_keys(v)
          for k, v in tree.items()}


_MATCH_HINT = ("the model settings must be those in the config.json beside "
               "it: start with a config file's base=DIR argument "
               "(configs/joint.py:base=DIR), which takes them")


def _read_exported(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """export_params' file: ({parameter path: array}, the saved fingerprint)."""
  with np.load(path, allow_pickle=False) as f:
    saved = json.loads(str(f["__fingerprint__"]))
    flat = {k: f[k] for k in f.files if k != "__fingerprint__"}
  return flat, saved


def _check_exported(path: str, flat: dict[str, np.ndarray], saved: dict):
  names = sorted(flat)
  got = fingerprint([jnp.asarray(flat[k]) for k in names])
  if set(names) != set(saved) or list(got.values()) != [saved[k] for k in names]:
    raise CorruptCheckpoint(f"{path} does not match the fingerprint saved "
                            "with it")


def _place(where: str, flat: dict[str, Any], like, keep_missing: bool):
  """A tree like `like` holding flat[path] placed per like's shardings
  (checked against its shapes and dtypes), and the paths `flat` lacks,
  which keep like's leaves when keep_missing, else fail."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = [jax.tree_util.keystr(k) for k, _ in paths]
  missing = [n for n in names if n not in flat]
  extra = sorted(set(flat) - set(names))
  if keep_missing and extra:
    raise ValueError(f"{where} holds parameters this model lacks: "
                     f"{extra[:4]}; {_MATCH_HINT}")
  if not keep_missing and (missing or extra):
    raise ValueError(f"{where} does not hold this model's parameters: missing "
                     f"{missing[:4]}, {len(flat)} arrays for {len(paths)}; "
                     f"{_MATCH_HINT}")
  leaves = []
  for name, (_, a) in zip(names, paths):
    if name not in flat:
      leaves.append(a)
      continue
    x = flat[name]
    if x.shape != a.shape or x.dtype != a.dtype:
      raise ValueError(f"{where}: {name} is {x.dtype}{list(x.shape)}, the "
                       f"model's {a.dtype}{list(a.shape)}; {_MATCH_HINT}")
    leaves.append(jax.device_put(x, a.sharding))
  return jax.tree.unflatten(treedef, leaves), missing


def _load_exported(path: str, abstract_params):
  """Parameters from export_params' file, placed per abstract_params and
  checked against the fingerprint saved with them."""
  flat, saved = _read_exported(path)
  params, _ = _place(path, flat, abstract_params, keep_missing=False)
  _check_exported(path, flat, saved)
  return params


def load_params_partial(workdir: str, fresh_params) -> tuple[Any, list[str]]:
  """config.init_from with config.init_from_partial: `fresh_params` (the new
  run's initialisation) with every parameter that `workdir`'s latest
  checkpoint, or its params.npz, holds replaced by that one. Returns the
  parameters and the paths kept fresh: the parameters of a module the model
  gained, which should start as a no-op (e.g. model.cross_pos's zero
  initialisation). A parameter the start holds and the model lacks, or one
  of another shape, is an error."""
  where = f"config.init_from={workdir!r}"
  saved = _restore_as_saved(workdir)
  if saved is not None:
    flat = {jax.tree_util.keystr(k): v
            for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    return _place(where, flat, fresh_params, keep_missing=True)
  path = os.path.join(workdir, PARAMS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{where} holds no checkpoint (train that run "
                            "first)")
  flat, fingerprint_saved = _read_exported(path)
  out = _place(where, flat, fresh_params, keep_missing=True)
  _check_exported(path, flat, fingerprint_saved)
  return out


def load_params(workdir: str, abstract_params):
  """The parameters of `workdir`'s latest checkpoint (config.init_from), or,
  when it has none, of its exported params.npz (export_params)."""
  directory = os.path.join(workdir, "checkpoints")
  if os.path.isdir(directory):  # (a Checkpointer would create it)
    ck = Checkpointer(directory, 1, 1)
    try:
      if ck.latest_step() is not None:
        return ck.restore_params(abstract_params)
    finally:
      ck.close()
  exported = os.path.join(workdir, PARAMS_FILE)
  if os.path.exists(exported):
    return _load_exported(exported, abstract_params)
  raise FileNotFoundError(f"config.init_from={workdir!r} holds no "
                          "checkpoint (train that run first)")
