"""Ships a trained run as the competent base: experiments/competence/base/
holds its final parameters (params.npz with their fingerprint), config.json,
and result.json with the test metrics (the study metric keys), the gate
table's verdict, the CPU time it took (its own run's, and with the runs
its parameters continued: search.lineage), and the metrics on a fixed slice of
the test split that tests/test_competence_base.py reproduces.

  python -m experiments.competence.export experiments/competence/runs/NAME
  python -m experiments.competence.export RUN --r3 --out DIR  # an R3 start

`configs/<name>.py:base=experiments/competence/base` then starts a run
from it with its world and model settings and the formats it writes
(r3jax.config.start_from).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import jax

from experiments.competence import report, search
from r3jax.analysis import competence
from r3jax.train import checkpoint as ckpt_lib

OUT = os.path.join("experiments", "competence", "base")
SLICE = 64  # test images the test re-scores (6 questions, 4 ITA pairs each)


def export(workdir: str, out: str = OUT, slice_n: int = SLICE) -> dict:
  params = ckpt_lib.export_params(workdir)
  os.makedirs(out, exist_ok=True)
  shutil.copy(params, os.path.join(out, ckpt_lib.PARAMS_FILE))
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["init_from"] = ""
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  cpu_s, wall_s, step = report.cpu(workdir)
  name = os.path.basename(os.path.normpath(workdir))
  runs = search.lineage(name) if name in search.VARIANTS else [name]
  steps = {r: report.cpu(search.workdir(r))[2] for r in runs[:-1]}
  for r in runs[1:]:
    up, at = search.parent(r)
    if at is not None and steps[up] > at:
      raise ValueError(f"{up} trained to step {steps[up]}, past the step "
                       f"{at} {r} left it at: its CPU time is not all in "
                       "the base")
    steps[up] = at or steps[up]  # where the next run left it
  cpu_all = cpu_s + sum(report.cpu(search.workdir(r))[0] for r in steps)
  if step != config["total_steps"]:
    raise ValueError(f"{workdir} stopped at step {step} of "
                     f"{config['total_steps']}: finish its schedule first")
  metrics = competence.read(workdir, "test")
  sliced = competence.evaluate(out, "test", slice_n)
  result = {
      "arm": "base", "run": workdir, "step": step,
      "command": search.shown(name) if name in search.VARIANTS else "",
      "metrics": {k: float(v) for k, v in metrics.items()},
      "competent": competence.passes(metrics, config["world"]["max_objects"]),
      "failed": competence.failed(metrics, config["world"]["max_objects"]),
      "r3_testable": competence.r3_testable(metrics,
                                            config["world"]["max_objects"]),
      "max_objects": config["world"]["max_objects"],
      "slice": {"split": "test", "max_examples": slice_n,
                "metrics": {k: float(v) for k, v in sliced.items()
                            if not k.endswith("seconds")}},
      "cpu_hours": cpu_s / 3600, "wall_seconds": wall_s,
      # the runs its parameters went through before this one: their CPU
      # time up to the step each was left at, and the total
      "lineage": [{"run": r, "to_step": s} for r, s in steps.items()],
      "lineage_cpu_hours": cpu_all / 3600,
      "hardware": {"device_kind": jax.devices()[0].device_kind,
                   "devices": jax.device_count(), "cpus": os.cpu_count()}}
  with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--out", default=OUT)
  p.add_argument("--r3", action="store_true",
                 help="export an R3-testable start (understanding passes, "
                 "captions do not) instead of a competent base")
  args = p.parse_args(argv)
  r = export(args.workdir, args.out)
  print(competence.table(r["metrics"], r["max_objects"], title=args.out))
  return 0 if r["r3_testable" if args.r3 else "competent"] else 1


if __name__ == "__main__":
  sys.exit(main())
