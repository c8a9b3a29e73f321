"""Per-process grain pipelines that yield global, mesh-sharded task batches.

Every task has its own stream over the train split (the same records for every
task, or, given a mapping, the task's own records): shuffle (new order each
epoch), repeat, then a seeded random map that draws one (question, target) pair
and formats it. The global batch k of a task is rows k*B .. k*B+B-1 of that
stream whatever the number of processes; process p reads only its rows, so the
same config gives the same global batches on 1 host or on a pod.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from r3jax import sharding
from r3jax.data import tasks as tasks_lib


class _ProcessRows(grain.MapDataset):
  """Row i of this process's stream is row (i//b)*B + p*b + i%b of the parent."""

  def __init__(self, parent: grain.MapDataset, global_batch: int,
               local_batch: int, process_index: int):
    super().__init__(parent)
    self._g, self._b, self._p = global_batch, local_batch, process_index

  def __len__(self) -> int:
    return len(self._parents[0]) // self._g * self._b

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k, j = divmod(index, self._b)
    return self._parents[0][k * self._g + self._p * self._b + j]


def check_image(record: Mapping[str, Any], image_size: int | None = None
                ) -> np.ndarray:
  """The record's image as (S, S, 3) uint8, or a ValueError naming the record
  (a float image is never cast: 0..1 values would all become 0)."""
  image = np.asarray(record["image"])
  want = (image_size, image_size, 3) if image_size else ("S", "S", 3)
  if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or
      image.shape[0] != image.shape[1] or
      (image_size and image.shape[0] != image_size)):
    where = f"record {record['index']}" if "index" in record else "a record"
    raise ValueError(
        f"{where} has an image of shape {image.shape} and dtype {image.dtype};"
        f" expected shape {want} and dtype uint8 (0..255), the size being "
        "config.world.image_size")
  return image


def _image_size(context: Mapping[str, Any] | None) -> int | None:
  context = context or {}
  if context.get("image_size"):
    return context["image_size"]
  world = context.get("world")
  return world.image_size if world is not None else None


def task_source(source, task: str):
  """The task's records: `source` itself, or its entry for the task when it
  maps task names to sources (real data: captions and VQA questions are
  different record sets)."""
  if isinstance(source, Mapping):
    if task not in source:
      raise ValueError(f"no data source for task {task!r}; the sources are "
                       f"for {sorted(source)}")
    return source[task]
  return source


def _task_seed(seed: int, task: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**31)


def stream(source, task: str, seed: int) -> grain.MapDataset:
  """A task's example stream before formatting: stream[j] is the record of
  its j-th example (batch b holds examples b * batch_size ...)."""
  return grain.MapDataset.source(source).shuffle(seed=_task_seed(seed, task)).repeat()


def task_dataset(source, tokenizer, task: str, max_len: int, global_batch: int,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 context: Mapping[str, Any] | None = None,
                 per_image: int = 1,
                 type_weights: Mapping[str, float] | None = None
                 ) -> grain.MapDataset:
  """This process's batches (numpy dicts) of one task, random-access.

  With `per_image` = k > 1 each image of the stream gives k examples, drawn
  independently (a record's question may come twice), or, for a grouped
  task (r3jax.data.tasks.Task.grouped), formatted together: a batch holds
  global_batch / k images, and text rows i*k .. i*k+k-1 belong to image i
  (Model.__call__ encodes each image once and repeats its tokens)."""
  if per_image < 1 or global_batch % per_image:
    raise ValueError(f"config.tasks.{task}.per_image={per_image} must be >= 1 "
                     f"and divide batch_size={global_batch}")
  images = global_batch // per_image
  if images % process_count:
    raise ValueError(f"config.tasks.{task}: {images} images per batch "
                     f"(batch_size={global_batch} / per_image={per_image}) "
                     f"are not divisible by the {process_count} processes")
  grouped = tasks_lib.TASKS[task].grouped
  if grouped:  # one formatter call gives the image's per_image rows
    context = {**(context or {}), "rows": per_image}
  task_fmt = tasks_lib.formatter(task, tokenizer, max_len, context,
                                 type_weights)
  tseed = _task_seed(seed, task)
  image_size = _image_size(context)

  def fmt(indexed, rng):
    index, record = indexed
    image = check_image(record, image_size)
    if per_image == 1 or grouped:
      out = task_fmt(record, rng, index)
    else:
      rows = [task_fmt(record, rng, index) for _ in range(per_image)]
      out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    out["image"] = image
    return out

  ds = stream(task_source(source, task), task, seed).map_with_index(
      lambda j, r: (j, r))
  ds = ds.random_map(fmt, seed=tseed + 1)
  local = images // process_count
  ds = _ProcessRows(ds, images, local, process_index)
  ds = ds.batch(local, drop_remainder=True)
  if per_image > 1:  # images x k x ... text arrays -> (images * k) x ...
    ds = ds.map(lambda b: {k: v if k == "image" else v.reshape(-1, *v.shape[2:])
                           for k, v in b.items()})
  return ds


def shared_dataset(source, tokenizer, tasks_cfg: Mapping[str, Any],
                   global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1,
                   context: Mapping[str, Any] | None = None) -> grain.MapDataset:
  """This process's batches of {task: {image, tokens, ...}} where every task's
  sub-batch holds the same images (one example of each task per image)."""
  if global_batch % process_count:
    raise ValueError(f"the shared batch size {global_batch} is not divisible "
                     f"by the {process_count} processes")
  names = sorted(tasks_cfg)
  if isinstance(source, Mapping):
    if len({id(task_source(source, n)) for n in names}) != 1:
      raise ValueError("config.data.layout='shared' needs one record set for "
                       "every task; these tasks read different ones: "
                       f"{names} (use layout 'split')")
    source = task_source(source, names[0])
  sseed = _task_seed(seed, "+".join(names))

  fmts = {name: tasks_lib.formatter(name, tokenizer, tasks_cfg[name].max_len,
                                    context, _type_weights(tasks_cfg[name]))
          for name in names}
  image_size = _image_size(context)

  def fmt(record, rng):
    image = check_image(record, image_size)
    out = {}
    for name in names:
      out[name] = fmts[name](record, rng)
      out[name]["image"] = image
    return out

  ds = grain.MapDataset.source(source).shuffle(seed=sseed).repeat()
  ds = ds.random_map(fmt, seed=sseed + 1)
  local = global_batch // process_count
  ds = _ProcessRows(ds, global_batch, local, process_index)
  return ds.batch(local, drop_remainder=True)


def _per_image(t) -> int:
  return getattr(t, "per_image", 1)


def _type_weights(t) -> dict[str, float]:
  return dict(getattr(t, "type_weights", None) or {})


def _check_batch_sizes(tasks_cfg: Mapping[str, Any],
                       mesh: jax.sharding.Mesh) -> None:
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  for name, t in sorted(tasks_cfg.items()):
    k = _per_image(t)
    if t.batch_size % k or (t.batch_size // k) % dp:
      what = (f"batch_size={t.batch_size}" if k == 1 else
              f"batch_size/per_image={t.batch_size}/{k}")
      raise ValueError(
          f"config.tasks.{name}.{what} is not divisible by the data-parallel "
          f"size data*fsdp={dp}")


def abstract_batch(tasks_cfg: Mapping[str, Any], tokenizer,
                   record: Mapping[str, Any], mesh: jax.sharding.Mesh,
                   context: Mapping[str, Any] | None = None
                   ) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
  """The global batch TrainData yields (either layout), as ShapeDtypeStructs
  carrying its sharding: formatting `record`, any record of the world, once
  per task fixes every shape and dtype, so nothing is read (for compiling
  ahead of time)."""
  _check_batch_sizes(tasks_cfg, mesh)
  shard = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  out = {}
  for name, t in sorted(tasks_cfg.items()):
    grouped = tasks_lib.TASKS[name].grouped
    ctx = {**(context or {}), "rows": _per_image(t)} if grouped else context
    row = tasks_lib.formatter(name, tokenizer, t.max_len, ctx)(record, rng)
    if grouped:  # the image's rows: one row's shapes
      row = {k: np.asarray(v)[0] for k, v in row.items()}
    row["image"] = check_image(record)
    rows = {k: t.batch_size // (_per_image(t) if k == "image" else 1)
            for k in row}
    out[name] = {k: jax.ShapeDtypeStruct((rows[k], *np.shape(v)),
                                         np.asarray(v).dtype, sharding=shard)
                 for k, v in row.items()}
  return out


# How the tasks' batches share images: "split", each task its own images;
# "shared", one stream of images for every task.
LAYOUTS = ("split", "shared")


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"config.data.layout must be one of {LAYOUTS}, got "
                     f"{layout!r}")


class TrainData:
  """Iterator over {task: {image, tokens, targets, loss_mask}} global arrays.

  layout "split": every task streams its own images; "shared": one stream in
  which every task's sub-batch holds the same images (task batch sizes must
  then be equal).
  """

  def __init__(self, source, tokenizer, tasks_cfg: Mapping[str, Any], seed: int,
               mesh: jax.sharding.Mesh, read_threads: int = 2,
               prefetch: int = 4, layout: str = "split",
               context: Mapping[str, Any] | None = None):
    self._sharding = sharding.batch_sharding(mesh)
    opts = grain.ReadOptions(num_threads=read_threads,
                             prefetch_buffer_size=prefetch)
    _check_batch_sizes(tasks_cfg, mesh)
    self._iters = {}
    check_layout(layout)
    if layout == "shared":
      sizes = {name: t.batch_size for name, t in tasks_cfg.items()}
      if len(set(sizes.values())) != 1:
        raise ValueError(f"config.data.layout='shared' needs equal task batch "
                         f"sizes, got {sizes}")
      ds = shared_dataset(source, tokenizer, tasks_cfg, next(iter(sizes.values())),
                          seed, jax.process_index(), jax.process_count(),
                          context)
      self._iters["shared"] = ds.to_iter_dataset(opts).__iter__()
    elif layout == "split":
      for name, t in sorted(tasks_cfg.items()):
        ds = task_dataset(source, tokenizer, name, t.max_len, t.batch_size,
                          seed, jax.process_index(), jax.process_count(),
                          context, _per_image(t), _type_weights(t))
        self._iters[name] = ds.to_iter_dataset(opts).__iter__()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, dict[str, jax.Array]]:
    if "shared" in self._iters:
      return {name: self.to_global(b)
              for name, b in sorted(next(self._iters["shared"]).items())}
    return {name: self.to_global(next(it)) for name, it in self._iters.items()}

  def to_global(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self._sharding, v)
            for k, v in local.items()}

  def get_state(self) -> dict[str, Any]:
    return {name: it.get_state() for name, it in self._iters.items()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if set(state) != set(self._iters):
      raise ValueError(f"data state has tasks {sorted(state)}, this run trains "
                       f"{sorted(self._iters)}")
    for name, it in self._iters.items():
      it.set_state(state[name])
