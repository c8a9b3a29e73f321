"""Stopping a run on SIGTERM / SIGINT at a step every process agrees on.

A scheduler's preemption notice (SIGTERM) or Ctrl-C (SIGINT) only sets a flag;
the training loop asks `StopOnSignal.agreed()` once per step and, when it says
so, saves a checkpoint of that step and raises `Preempted`. Rerunning the same
command resumes from that checkpoint. A second signal of the same kind while
the first is pending acts as it would without this handler (SIGINT raises
KeyboardInterrupt, SIGTERM terminates).

With several processes the flag travels through a one-element all-reduce per
step (max over processes of the local flags). Each `agreed()` call dispatches
that reduction and reads the one dispatched by the previous call, which has
completed by then whenever the caller has already fetched the previous step's
measurements; so the host never waits on the step in flight, and every process
stops at the same step: the one after the first reduction that saw a flag.
Per step that is one tiny collective launch; a single process pays nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class Preempted(Exception):
  """A run stopped by a signal after saving its checkpoint at `step`; running
  it again resumes there."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f"stopped by {signal_name} after step {step}; its "
                     "checkpoint is saved and a rerun resumes from it")
    self.step = step
    self.signal_name = signal_name


class StopOnSignal:
  """Context manager: installs the handlers on entry (main thread only;
  elsewhere `request()` is the only way in) and restores the previous ones on
  exit."""

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous: dict[int, object] = {}
    self._signal_name: str | None = None
    self._inflight: jax.Array | None = None
    self._reduce = self._in_sharding = None

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def _restore(self) -> None:
    for s, handler in self._previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self._signal_name is not None:  # asked twice: act as if not installed
      self._restore()
      signal.raise_signal(signum)
      return
    self.request(signal.Signals(signum).name)

  def request(self, name: str = "request") -> None:
    """Asks this process to stop, as a signal does."""
    if self._signal_name is None:
      self._signal_name = name
      logging.warning("%s received: stopping after the current step", name)

  @property
  def requested(self) -> bool:
    """Whether this process was asked to stop (the others may not know yet)."""
    return self._signal_name is not None

  @property
  def signal_name(self) -> str:
    return self._signal_name or "another process's signal"

  def agreed(self) -> bool:
    """True on every process at the same call once any process was asked to
    stop. Call it once per step, at the same point on every process."""
    if jax.process_count() == 1:
      return self.requested
    previous, self._inflight = self._inflight, self._any_process(self.requested)
    return previous is not None and bool(jax.device_get(
        previous.addressable_data(0)))

  def _any_process(self, flag: bool) -> jax.Array:
    """Dispatches max(flag over processes); returns without waiting."""
    devices = jax.devices()
    if self._reduce is None:
      mesh = Mesh(np.array(devices), ("all",))
      self._in_sharding = NamedSharding(mesh, P("all"))
      self._reduce = jax.jit(jnp.max,
                             out_shardings=NamedSharding(mesh, P()))
    local = np.full((1,), flag, np.int32)
    shards = [jax.device_put(local, d) for d in jax.local_devices()]
    x = jax.make_array_from_single_device_arrays(
        (len(devices),), self._in_sharding, shards)
    return self._reduce(x)
