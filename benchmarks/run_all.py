"""Runs every benchmark as a subprocess and collects their figures.

  python benchmarks/run_all.py [--smoke] [--json PATH] [--only decode,mfu]
      [--r3-workdir experiments/r3/runs/r3_sft/seed0]

Each script's stdout name=value pairs become one JSON object per script,
all written together to --json (default benchmarks/results/all.json, or
smoke.json with --smoke), and a summary
prints each benchmark's headline figures against its target. --smoke runs
every script at a tiny size with few repeats (a check that they run, not
figures to quote). r3_latency.py times the trained R3 run given by
--r3-workdir; without it, a freshly initialised model (and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (full args, smoke args, [(figure, target, test)]).
BENCHMARKS: dict[str, tuple[list[str], list[str], list[tuple]]] = {
    "vs_pytorch": (
        [], ["--batch", "4", "--steps", "2", "--rounds", "1", "--gen-batch",
             "4", "--gen-tokens", "8", "--threads", "1"],
        [("train_ratio", ">= 2", lambda v: v >= 2),
         ("generate_ratio", ">= 2", lambda v: v >= 2)]),
    "mfu": (
        [], ["--size", "tiny", "--batch", "2", "--steps", "2", "--rounds", "1"],
        [("mfu", "none on CPU", None),
         ("tflops_per_s", "-", None),
         ("xla_over_analytic", "~1 (1-1.2)", lambda v: 1 <= v <= 1.2)]),
    "decode": (
        [], ["--batch", "4", "--tokens", "32", "--repeats", "1",
             "--rounds", "1"],
        [("speedup_32", ">= 5", lambda v: v >= 5),
         ("speedup_128", "-", None)]),
    "scaling": (
        [], ["--size", "tiny", "--batch", "8"],
        [("ratio_8", "<= 1.1/8 = 0.1375", lambda v: v <= 0.1375)]),
    "interference_overhead": (
        [], ["--steps", "2", "--rounds", "1", "--batch", "4"],
        [("ratio_split", "-", None), ("ratio_shared", "-", None),
         ("ratio_method", "-", None)]),
    "compile_flags": (
        [], ["--rounds", "1", "--steps", "plain"],
        [("ratio_tests_plain", "-", None),
         ("ratio_tests_instrumented", "-", None)]),
    "r3_latency": (
        [], ["--examples", "8", "--batch", "8", "--repeats", "1"],
        [("ratio", "<= 1.5", lambda v: v <= 1.5),
         ("ratio_plain", "<= 1.5", lambda v: v <= 1.5),
         ("ratio_always_edit", "-", None)]),
}


def parse(stdout: str) -> dict[str, object]:
  """name=value pairs of every line, numbers as numbers."""
  out = {}
  for line in stdout.splitlines():
    if line.startswith("hardware="):  # one figure with spaces
      out["hardware"] = line.partition("=")[2]
      continue
    for item in line.split():
      name, eq, value = item.partition("=")
      if not eq or not name or name.startswith("-"):
        continue
      try:
        out[name] = int(value)
      except ValueError:
        try:
          out[name] = float(value)
        except ValueError:
          out[name] = value
  return out


def run(name: str, args: list[str]) -> dict[str, object]:
  cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *args]
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep +
         os.environ.get("PYTHONPATH", "")}
  t0 = time.perf_counter()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  figures = parse(p.stdout)
  figures.update(command=" ".join(["python", f"benchmarks/{name}.py", *args]),
                 returncode=p.returncode, wall_s=round(time.perf_counter() - t0, 1))
  if p.returncode:
    figures["error"] = p.stderr.strip().splitlines()[-1:] or ["?"]
  return figures


def summary(results: dict[str, dict]) -> list[str]:
  rows = [f"{'benchmark':<22} {'figure':<18} {'value':>12}  {'target':<18} met"]
  for name, figures in results.items():
    if figures.get("returncode"):
      rows.append(f"{name:<22} FAILED: {figures.get('error')}")
      continue
    for key, target, test in BENCHMARKS[name][2]:
      v = figures.get(key, "missing")
      met = "-"
      if test and isinstance(v, (int, float)):
        met = "yes" if test(v) else "no"
      shown = f"{v:.4g}" if isinstance(v, float) else str(v)
      rows.append(f"{name:<22} {key:<18} {shown:>12}  {target:<18} {met}")
  return rows


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--only", default="", help="comma-separated names")
  p.add_argument("--r3-workdir", default="",
                 help="a trained R3 run for r3_latency.py (without it, an "
                 "untrained model is timed)")
  p.add_argument("--json", default=None,
                 help="default benchmarks/results/all.json (smoke.json with "
                 "--smoke); '' writes nothing")
  args = p.parse_args(argv)
  if args.json is None:
    args.json = os.path.join(HERE, "results",
                             "smoke.json" if args.smoke else "all.json")
  names = [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]
  results = {}
  for name in names:
    full, smoke, _ = BENCHMARKS[name]
    extra = (["--workdir", args.r3_workdir]
             if name == "r3_latency" and args.r3_workdir else [])
    print(f"running {name} ...", flush=True)
    results[name] = run(name, (smoke if args.smoke else full) + extra)
  hw = next((r["hardware"] for r in results.values() if "hardware" in r), "?")
  out = {"date": time.strftime("%Y-%m-%d"), "hardware": hw,
         "smoke": args.smoke, "results": results}
  print(f"hardware={hw} smoke={args.smoke}")
  print("\n".join(summary(results)))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
