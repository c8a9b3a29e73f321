"""Run logs: a JSONL file (one object per logged step, pandas-readable) and
TensorBoard events, both written by process 0 only."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping

import jax


def tb_tag(key: str) -> str:
  """A TensorBoard-legal tag: ':' (task pairs) and '@' (thresholds) become '_'."""
  return re.sub(r"[^\w.\-/]", "_", key)


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX
  imports torch when it is installed (the test extra has it) only to accept
  torch tensors, which costs every run 1.5 s and its memory. When torch is
  not loaded yet it is hidden for that import and stays importable after."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir)


class Writer:

  def __init__(self, workdir: str, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._file = self._tb = None
    if not self._active:
      return
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      self._tb = _summary_writer(os.path.join(workdir, "tb"))

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self._active:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in values.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if math.isfinite(float(v)):
          self._tb.add_scalar(tb_tag(k), float(v), int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
