"""Where a run's relation answers lose the objects' positions
(r3jax.analysis.probe): linear probes from the image tokens and the
decoder's residual stream, and the cross-attention on the named objects.

  python -m experiments.competence.diagnose WORKDIR [--images N] [--split S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r3jax.analysis import probe


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--split", default="train")
  p.add_argument("--out", default="", help="also write the figures as JSON")
  p.add_argument("--label", default="", help="the JSON's title")
  args = p.parse_args(argv)
  d = probe.relation_diagnosis(args.workdir, args.images, args.split)
  print(probe.table(d))
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    argv = sys.argv[1:] if argv is None else argv
    d.update(label=args.label or args.workdir, command=" ".join(
        ["python -m experiments.competence.diagnose", *argv]))
    with open(args.out, "w") as f:
      json.dump(d, f, indent=1, sort_keys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
