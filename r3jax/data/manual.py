"""Shared plumbing of the TFDS builders over manually downloaded datasets.

A builder's config name is a hash of its settings (not of the manual
directory), so datasets built with other settings live in other directories.
Records are written as array_record and read back without TensorFlow; text
comes back as str (scalars) or list[str] (fixed-length text tensors).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from r3jax import logs


def config_name(prefix: str, params: dict[str, Any]) -> tuple[str, str]:
  """(name, description) of a config: a hash of `params` and their JSON."""
  text = json.dumps(params, sort_keys=True)
  return prefix + hashlib.sha256(text.encode()).hexdigest()[:12], text


def load_json(manual_dir: str, name: str) -> Any:
  path = os.path.join(manual_dir, name)
  if not os.path.exists(path):
    raise ValueError(f"{path} is missing: put the official {name} in the "
                     f"manual directory {manual_dir}")
  with open(path) as f:
    return json.load(f)


def image_path(manual_dir: str, *parts: str) -> str:
  path = os.path.join(manual_dir, *parts)
  if not os.path.exists(path):
    raise ValueError(f"image {path} is missing from the manual directory")
  return path


@contextlib.contextmanager
def build_lock(data_dir: str):
  """Holds an exclusive lock on `data_dir` (a file lock, so it also orders
  independent processes, e.g. two runs started at once on one machine)
  while a dataset is built there: the second builder waits, then finds the
  dataset prepared."""
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".build.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build(builder_cls, config, data_dir: str, manual_dir: str):
  """The prepared builder; reads `manual_dir` only if not built yet."""
  with build_lock(data_dir):
    builder = builder_cls(config=config, data_dir=data_dir,
                          file_format="array_record")
    what = None if os.path.exists(builder.data_dir) else (
        f"building {builder.name} at {builder.data_dir} from {manual_dir}")
    with logs.library_output(what):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def short_error(e: BaseException) -> str:
  """An exception on one line of at most 200 characters."""
  text = f"{type(e).__name__}: {e}".replace("\n", " ")
  return text if len(text) <= 200 else text[:197] + "..."


def _decode(v: Any) -> Any:
  if isinstance(v, bytes):
    return v.decode()
  if isinstance(v, np.ndarray) and v.dtype == object:
    return [x.decode() for x in v]
  return v


class Decoded:
  """Random access to a split, with text decoded to str / list[str]. A
  record that cannot be read is a ValueError naming it and `where`."""

  def __init__(self, source, where: str = "the dataset"):
    self._source = source
    self._where = where

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      record = dict(self._source[index])
    except (IndexError, KeyError):
      raise
    except Exception as e:  # noqa: BLE001 (array_record / TFDS decoding)
      raise ValueError(f"record {index} of {self._where} cannot be read "
                       f"({short_error(e)}); the files are damaged: delete the "
                       "directory to rebuild it") from e
    return self.decode(record)

  def decode(self, record: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode(v) for k, v in record.items()}

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def data_source(builder, split: str) -> Decoded:
  return Decoded(builder.as_data_source(split),
                 f"the {split!r} split in {builder.data_dir}")
