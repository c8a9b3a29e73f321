"""Multi-process start-up: one `jax.distributed.initialize` per process, before
any other JAX call.

Three ways in, first match wins:
  1. Explicit: a coordinator address (flag or R3JAX_COORDINATOR) with the
     process count and this process's id (flags or R3JAX_NUM_PROCESSES /
     R3JAX_PROCESS_ID). Any cluster, and local multi-process CPU runs.
  2. Detected: a multi-host TPU slice (TPU_WORKER_HOSTNAMES lists more than one
     host; MEGASCALE_* for multi-slice) or a SLURM job step with more than one
     task. JAX reads the coordinator and the ranks from the environment.
  3. Neither: a single process; nothing is initialised.
`mode="on"` forces (2) even where nothing is detected (JAX then raises if it
finds no cluster); `mode="off"` skips initialisation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MODES = ("auto", "on", "off")


def detected(env: Mapping[str, str] = os.environ) -> str | None:
  """Names the multi-process cluster this process runs in, if any."""
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  if len(hosts) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "tpu"
  tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
  if "SLURM_JOB_ID" in env and int(tasks) > 1:
    return "slurm"
  return None


def initialize(mode: str = "auto", coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               env: Mapping[str, str] = os.environ) -> str | None:
  """Initialises jax.distributed as the module docstring says; returns how
  ("explicit", "tpu", "slurm", "on") or None for a single process."""
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} is not one of {MODES}")
  if mode == "off":
    return None
  coordinator = coordinator or env.get("R3JAX_COORDINATOR") or None
  if num_processes is None and env.get("R3JAX_NUM_PROCESSES"):
    num_processes = int(env["R3JAX_NUM_PROCESSES"])
  if process_id is None and env.get("R3JAX_PROCESS_ID"):
    process_id = int(env["R3JAX_PROCESS_ID"])

  import jax  # noqa: PLC0415 (after argument checks: they need no backend)
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError("a coordinator address needs the process count and this "
                       "process's id: --num_processes and --process_id (or "
                       "R3JAX_NUM_PROCESSES and R3JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, "
                       f"--num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=num_processes,
                               process_id=process_id)
    return "explicit"
  if num_processes is not None or process_id is not None:
    raise ValueError("--num_processes / --process_id need a coordinator "
                     "address (--coordinator_address or R3JAX_COORDINATOR)")
  how = detected(env)
  if how is None and mode == "auto":
    return None
  jax.distributed.initialize()
  return how or "on"
