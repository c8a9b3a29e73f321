"""`make demo`: the R3 loop from the shipped R3 start, against joint training.

  python -m experiments.demo [--root runs] [--config.KEY=VALUE ...]

Runs the `demo` study (experiments/studies.py): from the shipped R3 start
(experiments/competence/r3_loop: understanding trained, captions not yet
right, the reflect and refine stages trained), a few hundred steps of joint
training and of R3-SFT, one seed. It prints the start's gates, both arms'
scores on the first test images, R3-SFT's loop round by round and which
stage fails, and a few of its drafts, reflections and refinements. A rerun
skips the arms already done. The study with seeds is `python -m
experiments.run r3_testable` (experiments/r3_testable/).
`--config.KEY=VALUE` overrides a config field in every arm, as for `python
-m experiments.run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import report
from experiments import run as run_lib
from experiments import studies as studies_lib

COLUMNS = (("caption/f1", "caption F1"), ("caption/v_strict", "V_strict"),
           ("vqa/accuracy", "VQA acc"),
           ("vqa/qtype/relation/accuracy", "relation acc"),
           ("ita/accuracy", "ITA acc"), ("r3/round3/f1", "R3 refined F1"),
           ("r3/round3/v_strict", "R3 refined V_strict"))
ROUND = (("v_strict", "V_strict"), ("f1", "F1"), ("improved", "improved"),
         ("worse", "worse"), ("stop_rate", "stop rate"))
STAGES = (("r3/reflect_right", "reflection is the verifier's edit"),
          ("r3/reflect_helpful", "reflection's edit raises V_frac"),
          ("r3/refine_right", "refine writes the named edit (when right)"),
          ("r3/refine_given_edit", "refine told the verifier's edit writes it"),
          ("r3/false_stop", "stops on a wrong draft, per stop"))


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
  return "\n".join([fmt(head), fmt(["-" * w for w in widths])] +
                   [fmt(r) for r in rows])


def _results(root: str, study: str) -> dict[str, dict[str, Any]]:
  return {r["arm"]: r for r in report.load(root, study)}


def table(root: str, study: str = "demo") -> str:
  """The study's arms (one seed) as a text table: each metric, and for
  every arm but the reference its change from the reference in brackets."""
  spec = studies_lib.get(study)
  results = _results(root, study)
  ref = results.get(spec.reference, {}).get("metrics", {})
  rows = []
  for arm in spec.arms:
    if arm.name not in results:
      continue
    m = results[arm.name]["metrics"]
    cells = [arm.name]
    for key, _ in COLUMNS:
      if key not in m:
        cells.append("-")
      elif arm.name != spec.reference and key in ref:
        cells.append(f"{m[key]:.3f} ({m[key] - ref[key]:+.3f})")
      else:
        cells.append(f"{m[key]:.3f}")
    cells.append(f"{m.get('train_seconds', float('nan')):.0f}")
    rows.append(cells)
  return _text_table(["arm"] + [label for _, label in COLUMNS] + ["train s"],
                     rows)


def rounds(metrics: Mapping[str, float]) -> str:
  """The loop's scores by round (round 0: the drafts), then its stages."""
  rows, r = [], 0
  while f"r3/round{r}/v_strict" in metrics:
    rows.append([str(r)] + [
        f"{metrics[k]:.3f}" if (k := f"r3/round{r}/{s}") in metrics else ""
        for s, _ in ROUND])
    r += 1
  lines = [_text_table(["round"] + [label for _, label in ROUND], rows), ""]
  lines += [f"{label}: {metrics[k]:.3f}" for k, label in STAGES
            if k in metrics]
  return "\n".join(lines)


def examples(path: str, n: int = 3) -> str:
  """Up to n of the loop's saved examples (r3_examples.jsonl): the first
  whose caption ends better than its draft, the first that ends worse, the
  first that stopped on its draft; each round's caption with its V_strict
  and the reflection that led to it."""
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  picks = []
  for want in ("better", "worse", "stopped"):
    for row in rows:
      change = row["v_frac"][-1] - row["v_frac"][0]
      if (want == "better" and change > 0 or want == "worse" and change < 0
          or want == "stopped" and len(row["reflections"]) == 1
          and row["stopped"]):
        picks.append((want, row))
        break
  out = []
  for want, row in picks[:n]:
    out.append(f"[{want}] test image {row['index']}")
    out.append(f"  draft      {row['captions'][0]}  "
               f"(V_strict {int(row['v_strict'][0])})")
    for r, reflection in enumerate(row["reflections"], 1):
      out.append(f"  reflect {r}  {reflection}")
      if r < len(row["captions"]) and not (
          row["stopped"] and r == len(row["reflections"])):
        out.append(f"  refine {r}   {row['captions'][r]}  "
                   f"(V_strict {int(row['v_strict'][r])})")
  return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.demo",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="runs")
  run_lib.accept_overrides(parser)
  args, rest = parser.parse_known_args(argv)
  sets = run_lib.overrides(parser, rest)
  study = studies_lib.get("demo")
  print("r3jax demo: from the shipped R3 start, "
        + " and ".join(a.name for a in study.arms)
        + f", one seed. Runs in {os.path.join(args.root, 'demo')}; a rerun "
        "skips the arms already done.\n")
  print(f"The start, {study.base}, on the whole test split:\n")
  print(report.exported_start(study.base)[1] + "\n")
  t0 = time.perf_counter()
  try:
    run_lib.run_study("demo", args.root, sets=sets)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = report.collect(args.root, "demo")
  results = _results(args.root, "demo")
  wall = sum(r.get("wall_seconds", 0) for r in results.values())
  print(f"\nONE SEED, {studies_lib.DEMO_STEPS} steps per arm (differences "
        "below are not tested against seed noise). Test split, first "
        f"{_examples(args.root)} images; in brackets the change from "
        f"`{study.reference}`:\n")
  print(table(args.root))
  r3 = results.get("r3_sft")
  if r3:
    print("\nR3-SFT's loop by round (round 0: its drafts; improved / worse: "
          "V_frac against the round before):\n")
    print(rounds(r3["metrics"]))
    ex = os.path.join(args.root, "demo", "runs", "r3_sft", "seed0",
                      "r3_examples.jsonl")
    if os.path.exists(ex):
      print("\nExamples:\n")
      print(examples(ex))
  print(f"\nwall time of the runs {wall:.0f} s (this call "
        f"{time.perf_counter() - t0:.0f} s); {path}\n"
        "The study with seeds and every arm: "
        "experiments/r3_testable/, `python -m experiments.run "
        "r3_testable`.")
  return 0


def _examples(root: str) -> str:
  path = os.path.join(root, "demo", "runs", "joint", "seed0", "config.json")
  with open(path) as f:
    n = json.load(f)["final_eval"]["max_examples"]
  return "all" if n < 0 else str(n)


if __name__ == "__main__":
  sys.exit(main())
