"""`make demo`: the reduced trade-off study, then its comparison table.

  python -m experiments.demo [--root runs] [--config.KEY=VALUE ...]

Runs the `demo` study (experiments/studies.py): a short joint base, then
equal-length continuations on generation only, understanding only, both, and
R3-SFT, one seed, about 10-15 minutes on a 2-core CPU. A rerun skips the arms
already done. The full study, with seeds, is `python -m experiments.run
dilemma` (experiments/dilemma/RESULTS.md). `--config.KEY=VALUE` overrides a
config field in every arm, as for `python -m experiments.run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from experiments import report
from experiments import run as run_lib
from experiments import studies as studies_lib

COLUMNS = (("caption/f1", "caption F1"), ("caption/v_strict", "V_strict"),
           ("caption/cider_d", "CIDEr-D"), ("vqa/accuracy", "VQA acc"),
           ("ita/accuracy", "ITA acc"), ("r3/round3/f1", "R3 refined F1"))


def table(root: str, study: str = "demo") -> str:
  """The study's arms (one seed) as a text table: each metric, and its change
  from the start arm in brackets."""
  spec = studies_lib.get(study)
  results = {r["arm"]: r for r in report.load(root, study)}
  start = results.get(spec.start, {}).get("metrics", {})
  head = ["arm"] + [label for _, label in COLUMNS] + ["train s"]
  rows = []
  for arm in spec.arms:
    if arm.name not in results:
      continue
    m = results[arm.name]["metrics"]
    cells = [arm.name]
    for key, _ in COLUMNS:
      if key not in m:
        cells.append("-")
      elif arm.name != spec.start and key in start:
        cells.append(f"{m[key]:.3f} ({m[key] - start[key]:+.3f})")
      else:
        cells.append(f"{m[key]:.3f}")
    cells.append(f"{m.get('train_seconds', float('nan')):.0f}")
    rows.append(cells)
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
  return "\n".join([fmt(head), fmt(["-" * w for w in widths])] +
                   [fmt(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.demo",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="runs")
  run_lib.accept_overrides(parser)
  args, rest = parser.parse_known_args(argv)
  sets = run_lib.overrides(parser, rest)
  study = studies_lib.get("demo")
  print("r3jax demo: the REDUCED trade-off study (one seed, short runs): "
        + ", ".join(a.name for a in study.arms)
        + f". Runs in {os.path.join(args.root, 'demo')}; a rerun skips the "
        "arms already done.\n")
  t0 = time.perf_counter()
  try:
    run_lib.run_study("demo", args.root, sets=sets)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = report.collect(args.root, "demo")
  wall = sum(r.get("wall_seconds", 0) for r in report.load(args.root, "demo"))
  print("\nREDUCED STUDY (one seed, a few hundred steps per arm; differences "
        "below are not tested against seed noise). Test split, first "
        f"{_examples(args.root)} images; in brackets the change from `base`, "
        "the joint checkpoint every other arm continues from:\n")
  print(table(args.root))
  print(f"\nwall time of the runs {wall:.0f} s (this call "
        f"{time.perf_counter() - t0:.0f} s); {path}\n"
        "The full study (3 seeds, longer runs, the easy setting): "
        "experiments/dilemma/RESULTS.md, `python -m experiments.run dilemma`.")
  return 0


def _examples(root: str) -> str:
  path = os.path.join(root, "demo", "runs", "base", "seed0", "config.json")
  with open(path) as f:
    n = json.load(f)["final_eval"]["max_examples"]
  return "all" if n < 0 else str(n)


if __name__ == "__main__":
  sys.exit(main())
