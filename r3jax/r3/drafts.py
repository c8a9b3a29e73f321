"""On-policy drafts for R3-SFT: the model's own captions, refreshed on a
schedule, as the drafts that reflect and refine learn to fix.

Every `every` steps (at step s0 = w * every, after its update) the run decodes
greedy captions with the current parameters for the R3 examples of the next
window of steps, (s0 + margin, s0 + every + margin], that are selected (a
fraction `frac`, fixed per example by its stream position); those examples
then use the model's draft instead of a corrupted reference caption. The
margin keeps the window ahead of the data prefetch, so which draft an example
gets depends only on its position in the stream: windows are saved under the
run's workdir and reloaded on resume, and a resumed run repeats an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Mapping

import jax
import numpy as np


class DraftStore:

  def __init__(self, directory: str, every: int, frac: float, margin: int,
               batch_sizes: Mapping[str, int], seed: int,
               timeout_s: float = 1800.0):
    self.dir, self.every, self.frac, self.margin = directory, every, frac, margin
    self.batch = dict(batch_sizes)
    self.seed, self.timeout_s = seed, timeout_s
    self._windows: dict[int, dict[str, dict[str, str]]] = {}
    self._ready = threading.Condition()
    os.makedirs(directory, exist_ok=True)

  def window(self, task: str, index: int) -> int:
    """Window of the training step that consumes stream example `index`."""
    step = index // self.batch[task] + 1
    return (step - self.margin - 1) // self.every

  def selected(self, task: str, index: int) -> bool:
    if self.window(task, index) < 1:
      return False
    rng = np.random.default_rng([self.seed, zlib.crc32(task.encode()), index])
    return bool(rng.random() < self.frac)

  def wanted(self, w: int) -> dict[str, list[int]]:
    """Stream indices, per task, of the selected examples of window w."""
    first = w * self.every + self.margin + 1  # first step of the window
    out = {}
    for task, b in self.batch.items():
      lo, hi = (first - 1) * b, (first - 1 + self.every) * b
      out[task] = [j for j in range(lo, hi) if self.selected(task, j)]
    return out

  def _path(self, w: int) -> str:
    return os.path.join(self.dir, f"window{w:06d}.json")

  def has(self, w: int) -> bool:
    return w in self._windows or os.path.exists(self._path(w))

  def put(self, w: int, drafts: Mapping[str, Mapping[int, str]]) -> None:
    data = {t: {str(j): d for j, d in m.items()} for t, m in drafts.items()}
    if jax.process_index() == 0:  # every process holds the same drafts
      tmp = self._path(w) + ".tmp"
      with open(tmp, "w") as f:
        json.dump(data, f)
      os.replace(tmp, self._path(w))
    with self._ready:
      self._windows[w] = data
      self._ready.notify_all()

  def get(self, task: str, index: int) -> str:
    w = self.window(task, index)
    deadline = time.monotonic() + self.timeout_s
    with self._ready:
      while w not in self._windows:
        if os.path.exists(self._path(w)):
          with open(self._path(w)) as f:
            self._windows[w] = json.load(f)
          break
        if not self._ready.wait(timeout=min(5.0, self.timeout_s)) and (
            time.monotonic() > deadline):
          raise TimeoutError(
              f"on-policy drafts of window {w} (steps after "
              f"{w * self.every + self.margin}) were never written to "
              f"{self.dir}; is config.data.prefetch larger than the margin "
              f"{self.margin}?")
      return self._windows[w][task][str(index)]
