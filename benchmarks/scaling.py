"""Per-device bytes of parameters + optimizer state under FSDP on 1, 2, 4, 8
fake CPU devices, from scripts/aot_compile.py's compiled training steps.

  python benchmarks/scaling.py [--size default] [--devices 8]

For fsdp = N the configured step is compiled (nothing allocated) and
aot_compile.figures reports per device: params+opt from the shard shapes and
the step's memory analysis (arguments, temp, total). Prints
params_opt_bytes_N, ratio_N = params_opt_bytes_N / params_opt_bytes_1
(ideal 1/N; replicated small parameters keep it a little above), total_bytes_N
and unsharded_large_N (parameters >= 1 MiB every device holds whole).
Target: ratio_N <= 1.1 / N.
"""

from __future__ import annotations

import argparse
import os
import sys

# Fake devices exist only if this is set before JAX initialises.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="default")
  p.add_argument("--batch", type=int, default=0,
                 help="per-task batch (0: the config's); a multiple of the "
                 "largest device count")
  p.add_argument("--tasks", default="",
                 help="comma-separated tasks to keep (default the config's)")
  p.add_argument("--devices", type=int, default=8,
                 help="the largest fsdp size (a power of two)")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  from benchmarks import common  # noqa: PLC0415
  from scripts import aot_compile  # noqa: PLC0415

  c = common.bench_config(args.size, args.batch or None, tasks=args.tasks)
  devices = aot_compile.devices_for(f"cpu:{args.devices}")
  rows = aot_compile.fsdp_table(c, devices)
  rep = common.Report()
  rep.hardware()
  rep.put(size=args.size, params_opt_bytes_whole=rows[0]["params+opt (whole)"])
  base = rows[0]["params+opt"]
  for r in rows:
    n = r["n"]
    rep.put(**{f"params_opt_bytes_{n}": r["params+opt"],
               f"ratio_{n}": r["params+opt"] / base,
               f"total_bytes_{n}": r["total"],
               f"unsharded_large_{n}": len(r["unsharded"])})
  rep.write(args.json)
  return rep.figures


if __name__ == "__main__":
  main()
