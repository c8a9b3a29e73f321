"""Orbax checkpoints of {train state, data iterator state}, atomic and keep-N.

A save only becomes visible once complete (orbax commits by rename), so a run
that dies mid-save still has its previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, keep: int, every_steps: int):
    self._mngr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True,
            enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state, data_state: dict[str, Any],
           force: bool = False) -> bool:
    return self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state) at `step` (default latest), placed per abstract_state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError("no checkpoint to restore")
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()

