"""Where refine goes wrong: its teacher-forced next-token accuracy on the
refined caption, by absolute position in the sequence and by offset inside
the refined caption, on the verifier's own refine examples (one per
validation image: a corrupted reference caption, the verifier's
instruction, the edited caption; r3jax/r3/data.py).

  python -m experiments.r3_testable.refine_positions RUN_OR_EXPORT \
      [--images 256] [--out experiments/r3_testable/pilot/NAME.json]

A refined caption mostly copies its draft, which sits 1-2 caption lengths
earlier; the decoder's positions are learned, and those past a caption's
length were trained by the R3 tasks alone.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np


def accuracy(workdir: str, images: int = 256, bucket: int = 10
             ) -> dict[str, object]:
  import jax  # noqa: PLC0415 (jax-heavy imports only when run)
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from r3jax.analysis import competence  # noqa: PLC0415
  from r3jax.r3 import data as r3_data  # noqa: PLC0415
  from r3jax.run import loop  # noqa: PLC0415
  from r3jax.train import checkpoint as ckpt_lib  # noqa: PLC0415

  config = competence.eval_config(workdir, "validation", images)
  mesh, world, setup, _ = loop.build(config, jax.devices()[:1])
  params = ckpt_lib.load_params(workdir, setup.abstract["params"])
  records = world.records("validation", images)
  fmt = r3_data.formatter("refine", world.tokenizer,
                          config.tasks.refine.max_len, world.world, config.r3)
  rng = np.random.default_rng(0)
  ex = [fmt(r, rng) for r in records]
  tokens, targets, mask = (np.stack([e[k] for e in ex])
                           for k in ("tokens", "targets", "loss_mask"))
  pixels = np.stack([r["image"] for r in records]).astype(np.uint8)
  model = nnx.merge(setup.graphdef, params)
  preds = []
  with jax.set_mesh(mesh):
    for s in range(0, len(ex), 32):
      logits = model(jnp.asarray(pixels[s:s + 32]),
                     jnp.asarray(tokens[s:s + 32]))
      preds.append(np.asarray(logits.argmax(-1)))
  right = np.concatenate(preds) == targets
  by_pos = collections.defaultdict(lambda: [0, 0])
  by_offset = collections.defaultdict(lambda: [0, 0])
  for b in range(len(ex)):
    for j, p in enumerate(np.nonzero(mask[b])[0]):
      for table, key in ((by_pos, p // bucket * bucket),
                         (by_offset, j // 5 * 5)):
        table[int(key)][0] += int(right[b, p])
        table[int(key)][1] += 1
  shown = lambda t: {str(k): {"accuracy": r / n, "tokens": n}  # noqa: E731
                     for k, (r, n) in sorted(t.items())}
  return {"run": workdir, "images": len(ex),
          "caption_len": int(config.tasks.caption.max_len),
          "by_position": shown(by_pos), "by_offset": shown(by_offset),
          "all_right": float(np.mean([right[b][mask[b] > 0].all()
                                      for b in range(len(ex))]))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--images", type=int, default=256)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  result = accuracy(args.workdir, args.images)
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
