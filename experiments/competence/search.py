"""The competence recipe search: named variants of the joint recipe, each a
`python -m r3jax.main` command, run with their CPU time recorded.

  python -m experiments.competence.search NAME [NAME ...]   # run (or resume)
  python -m experiments.competence.search --list            # the commands

A variant trains the whole schedule of a candidate base (validation every
1,000 steps), so the search's winner is continued, not trained again. A run
stopped at any point (kill, SIGTERM, a session's end) resumes from its last
checkpoint when the same command runs again; each stretch of training
appends its wall and CPU seconds (user + system, this process's children, from
os.wait4) to <workdir>/cpu.jsonl, and the learning-curve table
(experiments.competence.report) adds them up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.join("experiments", "competence", "runs")

# The long schedule every variant is a candidate for; the learning rate
# decays over it (cosine), so a variant stopped early has seen a high rate.
STEPS = 20_000
COMMON = ("--config.interference.enabled=False",
          "--config.eval_every_steps=1000", "--config.ckpt_every_steps=500",
          "--config.progress_bar=False")
CONV = ("--config.model.stem=conv",)
SINCOS = ("--config.model.pos_init=sincos2d",)
MIX = ("--config.tasks.caption.batch_size=16", "--config.tasks.vqa.batch_size=64",
       "--config.tasks.ita.batch_size=32")

# name -> (what it changes, its flags beyond COMMON)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "conv_mix": ("conv stem, caption 16 / VQA 64 / ITA 32 per step",
                 CONV + MIX),
    "conv_mix_sincos": ("conv_mix with 2-D sin-cos initial positions",
                        CONV + MIX + SINCOS),
}


def workdir(name: str) -> str:
  return os.path.join(ROOT, name)


def command(name: str) -> list[str]:
  if name not in VARIANTS:
    raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
  return [sys.executable, "-m", "r3jax.main",
          f"--config=configs/joint.py:steps={STEPS}",
          f"--workdir={workdir(name)}", *COMMON, *VARIANTS[name][1]]


def shown(name: str) -> str:
  cmd = command(name)
  return " ".join(["python", *map(shlex.quote, cmd[1:])])


def last_step(wd: str) -> int:
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  step = 0
  with open(path) as f:
    for line in f:
      step = max(step, json.loads(line)["step"])
  return step


def run(name: str) -> int:
  """Trains (or resumes) variant `name`; appends the stretch's wall and CPU
  seconds to its cpu.jsonl; returns the command's exit status."""
  wd = workdir(name)
  os.makedirs(wd, exist_ok=True)
  start, t0 = last_step(wd), time.time()
  with open(os.path.join(wd, "train.log"), "a") as log:
    proc = subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT)
    try:
      _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
      proc.terminate()  # the run saves a checkpoint of its current step
      _, status, usage = os.wait4(proc.pid, 0)
  record = {"from_step": start, "to_step": last_step(wd),
            "wall_s": time.time() - t0,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "exit": os.waitstatus_to_exitcode(status), "started": t0,
            "nproc": os.cpu_count()}
  with open(os.path.join(wd, "cpu.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
  return record["exit"]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("names", nargs="*")
  p.add_argument("--list", action="store_true")
  args = p.parse_args(argv)
  if args.list or not args.names:
    for name, (what, _) in VARIANTS.items():
      print(f"{name}: {what}\n  {shown(name)}")
    return 0
  for name in args.names:
    command(name)  # unknown names fail before anything runs
  return max(run(name) for name in args.names)


if __name__ == "__main__":
  sys.exit(main())
