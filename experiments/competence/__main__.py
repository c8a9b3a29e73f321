"""The competence gate table of a run on the test split.

  python -m experiments.competence WORKDIR [WORKDIR ...]
  python -m experiments.competence WORKDIR --evaluate [--max-examples N]

Without --evaluate the table reads the run's result.json (a study's run, an
exported base) or its metrics.jsonl's last test evaluation; with it, the
run's latest checkpoint (or params.npz) is scored afresh on the first N test
images (-1: all). Exit status 0 when every run passes every gate, 1 when
one does not.
"""

from __future__ import annotations

import argparse
import sys

from r3jax.analysis import competence


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--split", default="test")
  p.add_argument("--evaluate", action="store_true",
                 help="score the run's parameters afresh")
  p.add_argument("--max-examples", type=int, default=-1)
  args = p.parse_args(argv)
  ok = True
  for wd in args.workdirs:
    if args.evaluate:
      metrics = competence.evaluate(wd, args.split, args.max_examples)
    else:
      metrics = competence.read(wd, args.split)
    n = competence.max_objects_of(wd)
    print(competence.table(metrics, n, title=f"{wd} ({args.split})"))
    print()
    ok &= competence.passes(metrics, n)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
