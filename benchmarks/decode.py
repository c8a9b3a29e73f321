"""Greedy decoding with a KV cache against recomputing the whole prefix.

  python benchmarks/decode.py [--size default] [--batch 32] [--tokens 32,128]
      [--repeats 3] [--rounds 2]

Both are r3jax.model.decoding's, jitted, on the same model, images and
one-token prompts: `generate` (image encoded once, cross-attention k/v and a
self-attention KV cache reused, one position per step) and
`generate_recompute` (every step reruns teacher forcing over the whole
buffer). eos never stops a row, so both generate exactly N tokens. Prints
kv_ms_N, recompute_ms_N, kv_tokens_per_s_N and speedup_N = recompute / kv
for each N of --tokens (target: speedup_32 >= 5).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="default")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--tokens", default="32,128",
                 help="comma-separated numbers of generated tokens")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from benchmarks import common  # noqa: PLC0415
  from r3jax.model import Model, decoding  # noqa: PLC0415

  counts = [int(x) for x in args.tokens.split(",")]
  c = common.bench_config(args.size, max_len=1 + max(counts))
  mcfg = common.model_config(c)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(Model(mcfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  size = c.world.image_size
  images = jnp.asarray(rng.integers(0, 256, (args.batch, size, size, 3),
                                    np.uint8))
  prompt = jnp.full((args.batch, 1), 4, jnp.int32)
  prompt_len = jnp.ones((args.batch,), jnp.int32)
  kw = dict(eos_id=-1, pad_id=0)  # eos_id=-1: no row ever stops early

  def fns(n):
    gen = decoding.make_generate_fn(graphdef, max_len=1 + n, prefill_len=1,
                                    **kw)
    rec = jax.jit(lambda s, im, pr, pl: decoding.generate_recompute(
        nnx.merge(graphdef, s), im, pr, pl, max_len=1 + n, **kw))
    out = {}
    for name, f in (("kv", gen), ("recompute", rec)):
      def run(f=f):
        return jax.block_until_ready(f(state, images, prompt, prompt_len))
      g = run()  # compile
      if int(g.gen_len.min()) != n:
        raise RuntimeError(f"{name} generated {g.gen_len.min()} tokens, not {n}")
      out[f"{name}_{n}"] = run
    return out

  timed = {}
  for n in counts:
    timed.update(fns(n))
  med = common.interleaved(timed, args.rounds, args.repeats)
  rep = common.Report()
  rep.hardware()
  rep.put(size=args.size, batch=args.batch,
          params=sum(x.size for x in jax.tree.leaves(state)),
          repeats=args.repeats * args.rounds)
  for n in counts:
    kv, recompute = med[f"kv_{n}"], med[f"recompute_{n}"]
    rep.put(**{f"kv_ms_{n}": 1e3 * kv, f"recompute_ms_{n}": 1e3 * recompute,
               f"kv_tokens_per_s_{n}": args.batch * n / kv,
               f"speedup_{n}": recompute / kv})
  rep.write(args.json)
  return rep.figures


if __name__ == "__main__":
  main()
