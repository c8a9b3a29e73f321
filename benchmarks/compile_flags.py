"""Compile time of the training step under XLA:CPU flag sets.

  python benchmarks/compile_flags.py [--size runlocal] [--rounds 3]
      [--steps plain,instrumented]

The test suite's time is mostly compilation of tiny models, so it runs XLA
with the flags of tests/conftest.py's FAST_COMPILE. This measures what they
buy. Each flag set runs in a subprocess of its own (XLA reads XLA_FLAGS once
per process), which lowers and compiles the configured training step from
abstract state and batch (scripts/aot_compile.py's `abstract_step`; no
persistent cache), the sets interleaved round by round so that drift in the
machine's speed hits each alike. Sizes: `runlocal` (configs/joint.py's CPU
smoke config, the tests' tiny model) or a benchmarks/common.py SIZES entry.
Steps: `plain` (the weighted sum) and `instrumented` (per-task gradients,
their Gram statistics and the aggregation method).

Prints, per set and step, lower_s_SET_STEP and compile_s_SET_STEP (medians
over rounds) and ratio_SET_STEP = compile_s / compile_s of `default`.
Sets:
  default         XLA's own settings
  opt0            --xla_backend_optimization_level=0 (no LLVM optimisation)
  opt0_elemental  opt0 with the classic elemental emitters instead of the
                  MLIR fusion emitters
  tests           FAST_COMPILE: opt0_elemental in one codegen module
Compilation is on the CPU: the figures are for XLA:CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

_OPT0 = "--xla_backend_optimization_level=0"
_ELEMENTAL = _OPT0 + " --xla_cpu_use_fusion_emitters=false"
SETS = {
    "default": "",
    "opt0": _OPT0,
    "opt0_elemental": _ELEMENTAL,
    "tests": _ELEMENTAL + " --xla_cpu_parallel_codegen_split_count=1",
}
STEPS = ("plain", "instrumented")


def _child(size: str, step: str) -> None:
  """Lowers and compiles the step once; prints {"lower": s, "compile": s}."""
  import jax  # noqa: PLC0415

  from benchmarks import common  # noqa: PLC0415
  from configs import joint  # noqa: PLC0415
  from scripts import aot_compile  # noqa: PLC0415

  jax.config.update("jax_enable_compilation_cache", False)
  if size == "runlocal":
    c = joint.get_config("runlocal")
    c.compilation_cache_dir = ""
  else:
    c = common.bench_config(size)
  c.interference.enabled = step == "instrumented"
  s = aot_compile.abstract_step(c, jax.devices()[:1])
  t0 = time.perf_counter()
  with jax.set_mesh(s.mesh):  # as a run lowers it
    lowered = s.update.lower(s.setup.abstract, s.batch)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  print(json.dumps({"lower": t1 - t0, "compile": t2 - t1}))


def _time(size: str, step: str, flags: str) -> dict[str, float]:
  """The child's seconds for `step` compiled under `flags`."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, __file__, "--child", step, "--size", size], env=env,
      capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"compiling the {step} step with XLA_FLAGS={flags!r} "
                       f"failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="runlocal")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", default=",".join(STEPS))
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  if args.child:
    _child(args.size, args.child)
    return {}
  steps = args.steps.split(",")
  if unknown := set(steps) - set(STEPS):
    p.error(f"unknown --steps {sorted(unknown)}; known: {STEPS}")

  from benchmarks import common  # noqa: PLC0415
  rep = common.Report()
  rep.hardware()
  times = {(n, st): [] for n in SETS for st in steps}
  for _ in range(args.rounds):
    for st in steps:
      for n, flags in SETS.items():
        times[n, st].append(_time(args.size, st, flags))
  rep.put(size=args.size, rounds=args.rounds)
  for st in steps:
    base = statistics.median(t["compile"] for t in times["default", st])
    for n in SETS:
      comp = statistics.median(t["compile"] for t in times[n, st])
      rep.put(**{f"lower_s_{n}_{st}": statistics.median(
                     t["lower"] for t in times[n, st]),
                 f"compile_s_{n}_{st}": comp,
                 f"ratio_{n}_{st}": comp / base})
  rep.write(args.json)
  return rep.figures


if __name__ == "__main__":
  main()
