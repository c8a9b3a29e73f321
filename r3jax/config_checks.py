"""The checks behind `r3jax.config.validate`: keys, types, and values that
would otherwise fail late (in the dataset, the model or the mesh)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

_ENC_OVERRIDES = ("width", "depth", "heads", "mlp")


def _expected(default: Any) -> tuple[str, tuple[type, ...]] | None:
  """(what to write, the types accepted) where the defaults hold `default`;
  ints stand for floats and lists for tuples (and back)."""
  if isinstance(default, bool):
    return "a bool", (bool, np.bool_)
  if isinstance(default, int):
    return "an int", (int, np.integer)
  if isinstance(default, float):
    return "a float (or int)", (int, float, np.integer, np.floating)
  if isinstance(default, str):
    return "a str", (str,)
  if isinstance(default, (list, tuple)):
    return "a list or tuple", (list, tuple)
  if isinstance(default, Mapping):
    return "a dict", (Mapping,)
  return None  # None or another kind of default: anything goes


def type_problem(key: str, value: Any, default: Any) -> str | None:
  """Why `value` cannot stand where the defaults hold `default` (None: it
  can). A bool is not a number; a list's items are checked when the
  default's items share one type."""
  expected = _expected(default)
  if expected is None:
    return None
  want, types = expected
  if not isinstance(value, types) or (
      isinstance(value, (bool, np.bool_)) and not isinstance(default, bool)):
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"config.{key} must be {want}, got {type(value).__name__} {shown}"
  if isinstance(default, (list, tuple)) and (
      len({type(x) for x in default}) == 1):
    for i, x in enumerate(value):
      problem = type_problem(f"{key}[{i}]", x, default[0])
      if problem:
        return problem
  return None


def check_types(got: Mapping[str, Any], ref: Mapping[str, Any],
                task_ref: Mapping[str, Any]) -> None:
  """Every value has its default's type (see `type_problem`); `task_ref` is
  one task's defaults."""
  for key, default in ref.items():
    problem = type_problem(key, got[key], default)
    if problem:
      raise ValueError(problem)
  for name, t in got["tasks"].items():
    if not isinstance(t, Mapping):
      raise ValueError(type_problem(f"tasks.{name}", t, {}))
    for k, v in t.items():
      problem = k in task_ref and type_problem(f"tasks.{name}.{k}", v,
                                               task_ref[k])
      if problem:
        raise ValueError(problem)
  for k, v in got["data.split_sizes"].items():
    problem = type_problem(f"data.split_sizes.{k}", v, 1)
    if problem:
      raise ValueError(problem)
  for k, v in got["model.enc_overrides"].items():
    if k not in _ENC_OVERRIDES:
      raise ValueError(f"unknown key {k!r} in config.model.enc_overrides; "
                       f"known: {list(_ENC_OVERRIDES)}")
    problem = type_problem(f"model.enc_overrides.{k}", v, 1)
    if problem:
      raise ValueError(problem)


def check_type_weights(task: str, weights: Mapping[str, Any],
                       types: tuple[str, ...]) -> None:
  """config.tasks.<task>.type_weights names the task's item types, with
  finite weights >= 0 that are not all 0."""
  if not weights:
    return
  if not types:
    raise ValueError(f"config.tasks.{task}.type_weights={weights}: the {task} "
                     "task's items have no types to weigh")
  for k, v in weights.items():
    if k not in types:
      raise ValueError(f"unknown type {k!r} in config.tasks.{task}."
                       f"type_weights; known: {list(types)}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
        0 <= v < float("inf")):
      raise ValueError(f"config.tasks.{task}.type_weights.{k}={v!r} must be "
                       "a finite number >= 0")
  if not any(weights.values()) and set(weights) == set(types):
    raise ValueError(f"config.tasks.{task}.type_weights weighs every type 0")


def check_keys(got: Mapping[str, Any], ref: Mapping[str, Any]) -> None:
  """`got` has exactly the keys of `ref` (both flat: "model.encoder")."""
  nodes = {key.rsplit(".", i)[0] for key in ref
           for i in range(1, key.count(".") + 1)}
  for key in got:
    if key in ref:
      continue
    parts = key.split(".")
    for i in range(1, len(parts)):  # a setting given as a dict
      head = ".".join(parts[:i])
      if head in ref:
        want = (_expected(ref[head]) or ("a value",))[0]
        raise ValueError(f"config.{head} is one setting ({want}), not a dict "
                         f"(got config.{key})")
    if key in nodes:  # a dict of settings given as one value
      raise ValueError(type_problem(key, got[key], {}))
    near = difflib.get_close_matches(key, list(ref), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ValueError(f"unknown config key {key!r}{hint}")
  for key in ref:
    if key not in got:
      raise ValueError(f"config key {key!r} is missing")


def check_data(config: ml_collections.ConfigDict) -> None:
  """Splits, evaluation settings and the batch layout."""
  sizes = config.data.split_sizes
  for split, n in sizes.items():
    if n <= 0:
      raise ValueError(f"config.data.split_sizes.{split} must be > 0, got {n}")
  for key in ("evals", "final_eval"):
    e = config[key]
    if e.split not in sizes:
      raise ValueError(f"config.{key}.split={e.split!r} is not in "
                       f"config.data.split_sizes {sorted(sizes)}")
    if e.batch_size <= 0 or not (e.max_examples == -1 or e.max_examples > 0):
      raise ValueError(f"config.{key} needs batch_size > 0 and max_examples "
                       f"> 0 (or -1: the whole split), got {e.to_dict()}")
  if "train" not in sizes:
    raise ValueError("config.data.split_sizes needs a 'train' split")
  batch = {name: t.batch_size for name, t in config.tasks.items()}
  if config.data.layout == "shared" and len(set(batch.values())) > 1:
    raise ValueError("config.data.layout='shared' needs equal task batch "
                     f"sizes (config.tasks.<task>.batch_size), got {batch}")


def check_model(config: ml_collections.ConfigDict,
                evaluated: Mapping[str, Any]) -> None:
  """The named encoder size, the stem, the dtype, the remat policy, the
  decoder length and the sizes that must divide (types are checked before)."""
  from r3jax.model.config import REMAT_POLICIES, VIT_SIZES  # noqa: PLC0415
  m = config.model
  if m.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.model.dtype must be float32 or bfloat16, got "
                     f"{m.dtype!r}")
  if m.remat not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat must be one of "
                     f"{list(REMAT_POLICIES)}, got {m.remat!r}")
  longest = max(t.max_len for t in evaluated.values())
  if m.max_len and m.max_len < longest:
    raise ValueError(f"config.model.max_len={m.max_len} is shorter than the "
                     f"longest trained or evaluated task (max_len {longest}); "
                     "raise it or set 0 (the longest task's)")
  if m.encoder not in VIT_SIZES:
    raise ValueError(f"config.model.encoder={m.encoder!r} is not a named size; "
                     f"known: {list(VIT_SIZES)} (config.model.enc_overrides "
                     "changes a size)")
  if m.stem not in ("patch", "conv"):
    raise ValueError(f"config.model.stem must be 'patch' or 'conv', got "
                     f"{m.stem!r}")
  if m.stem_convs < 0 or (m.stem_convs and m.stem != "conv"):
    raise ValueError(f"config.model.stem_convs={m.stem_convs} needs "
                     "stem='conv' (and must be >= 0)")
  if m.pos_init not in ("normal", "sincos2d"):
    raise ValueError(f"config.model.pos_init must be 'normal' or 'sincos2d', "
                     f"got {m.pos_init!r}")
  if not -1 <= m.dec_identity_from:
    raise ValueError(f"config.model.dec_identity_from must be -1 (no block) "
                     f"or a block index, got {m.dec_identity_from}")
  if not isinstance(m.fusion_depth, int) or m.fusion_depth < 0:
    raise ValueError(f"config.model.fusion_depth must be an int >= 0, got "
                     f"{m.fusion_depth!r}")
  if m.cross_pos not in ("none", "xy"):
    raise ValueError(f"config.model.cross_pos must be 'none' or 'xy', got "
                     f"{m.cross_pos!r}")
  enc = dict(zip(_ENC_OVERRIDES, VIT_SIZES[m.encoder]), **m.enc_overrides)
  dec = {k: m[f"dec_{k}"] for k in _ENC_OVERRIDES}
  for part, sizes in (("enc", enc), ("dec", dec)):
    bad = {k: v for k, v in sizes.items() if v <= 0}
    if bad:
      raise ValueError(f"config.model {part} sizes must be > 0, got {bad}")
    if sizes["width"] % sizes["heads"]:
      raise ValueError(f"config.model: {part} width {sizes['width']} is not "
                       f"divisible by its {sizes['heads']} heads")
  if m.patch_size <= 0 or config.world.image_size % m.patch_size:
    raise ValueError(f"config.world.image_size={config.world.image_size} is "
                     "not divisible by config.model.patch_size="
                     f"{m.patch_size}")
