"""Multi-process training: 2 local CPU processes (2 devices each) stop
together on a signal and equal one process on 4 devices; start-up detection
and its errors."""

import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, committed_steps, main_command
from r3jax import distributed
from r3jax.run import loop
from r3jax.train import metrics as metrics_lib
from r3jax.train.checkpoint import Checkpointer


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(c, workdir: str, logs: str, processes: int = 2,
           devices_each: int = 2) -> list[subprocess.Popen]:
  """Starts `processes` copies of r3jax.main on one coordinator port; process
  i writes to logs + str(i)."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{FAST_COMPILE} "
             f"--xla_force_host_platform_device_count={devices_each}")
  procs = []
  for i in range(processes):
    with open(f"{logs}{i}", "w") as out:
      procs.append(subprocess.Popen(
          main_command(c, workdir, f"--coordinator_address=127.0.0.1:{port}",
                       f"--num_processes={processes}", f"--process_id={i}"),
          cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
  return procs


def wait(procs, logs: str, timeout: float = 600) -> list[str]:
  """Every process's exit code and output, once all have ended."""
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return codes, [open(f"{logs}{i}").read() for i in range(len(procs))]


def _final_state(c, workdir: str, devices):
  _, _, setup, _ = loop.build(c, devices)
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), 2, 2)
  try:
    return jax.device_get(ck.restore(setup.abstract))
  finally:
    ck.close()


def test_two_processes_stop_together_and_equal_one_process(tiny, tmp_path):
  """2 processes x 2 CPU devices: SIGTERM to process 1 alone stops both after
  the same step with its checkpoint (exit 75); rerunning the same commands
  finishes the run, whose final state equals 1 process on 4 devices."""
  c = tiny(data=4)
  c.interference.enabled = True  # cross-process Gram statistics too
  c.total_steps, c.eval_every_steps = 8, 100
  c.final_eval.max_examples = 8
  workdir, logs = str(tmp_path / "multi"), str(tmp_path / "log")
  # The processes run alone: gloo gives a peer 30 s to join a collective, so
  # they should not compete for the CPU with a third run.
  procs = launch(c, workdir, logs)
  t0 = time.monotonic()
  while not committed_steps(workdir):
    assert all(p.poll() is None for p in procs), wait(procs, logs)[1]
    assert time.monotonic() - t0 < 600, "no checkpoint in 600 s"
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGTERM)
  codes, outs = wait(procs, logs)
  assert codes == [75, 75], outs
  stops = [re.search(r"stopped by (\S+).* after step (\d+)", o).groups()
           for o in outs]
  assert stops[1][0] == "SIGTERM" and stops[0][0] == "another"
  step = int(stops[0][1])
  assert stops[1][1] == str(step) and step < c.total_steps
  assert committed_steps(workdir)[-1] == step

  codes, outs = wait(launch(c, workdir, logs), logs)
  assert codes == [0, 0], outs
  four = jax.devices()[:4]
  single = loop.train_and_evaluate(c, str(tmp_path / "single"), four)

  (s_multi, d_multi), (s_single, d_single) = (
      _final_state(c, w, four) for w in (workdir, str(tmp_path / "single")))
  assert int(s_multi["step"]) == c.total_steps
  assert d_multi == d_single  # the data iterators stand at the same place
  flat = jax.tree_util.tree_flatten_with_path(s_single)[0]
  other = dict(jax.tree_util.tree_flatten_with_path(s_multi)[0])
  for path, x in flat:
    name = jax.tree_util.keystr(path)
    if "key" in name and "bias" in name:
      # Softmax ignores a bias on the keys: its gradient is 0 up to rounding,
      # which Adam normalises into lr-sized steps of either sign.
      continue
    # Equal up to the order of the cross-process sums.
    np.testing.assert_allclose(other[path], x, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # One writer: each step logged once; the report printed by process 0 only.
  rows = metrics_lib.read(workdir)
  steps = [r["step"] for r in rows if "loss" in r]
  assert steps == list(range(1, c.total_steps + 1))
  np.testing.assert_allclose(rows[-1]["test/vqa/accuracy"],
                             single["vqa/accuracy"])
  assert "train_seconds" in outs[0] and "train_seconds" not in outs[1]


def test_detects_tpu_pods_and_slurm_jobs():
  assert distributed.detected({}) is None
  assert distributed.detected({"TPU_WORKER_HOSTNAMES": "t0"}) is None
  assert distributed.detected({"TPU_WORKER_HOSTNAMES": "t0,t1"}) == "tpu"
  assert distributed.detected({"MEGASCALE_COORDINATOR_ADDRESS": "a"}) == "tpu"
  assert distributed.detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
  # A single-task job step inside a larger allocation stays single-process.
  assert distributed.detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4",
                               "SLURM_STEP_NUM_TASKS": "1"}) is None
  assert distributed.initialize("auto", env={}) is None
  assert distributed.initialize("off", env={"SLURM_JOB_ID": "7",
                                            "SLURM_NTASKS": "4"}) is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="sometimes"), "is not one of"),
    (dict(coordinator="h:1", num_processes=2), "needs the process count"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"must be in \[0"),
    (dict(num_processes=2, process_id=0), "need a coordinator address"),
    (dict(env={"R3JAX_NUM_PROCESSES": "2"}), "need a coordinator address"),
])
def test_bad_distributed_arguments_name_the_flag(kwargs, message):
  kwargs.setdefault("env", {})
  with pytest.raises(ValueError, match=message):
    distributed.initialize(**kwargs)
