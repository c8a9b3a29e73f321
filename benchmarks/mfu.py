"""Model FLOPs utilisation of r3jax's plain training step.

  python benchmarks/mfu.py                      # ViT-B/16 224 px + 6 x 768
                                                # decoder, bf16 (accelerators)
  python benchmarks/mfu.py --size tiny --batch 2   # CPU smoke run
      [--dtype bfloat16] [--remat none|dots|full] [--steps 10] [--rounds 3]

Model FLOPs per step are counted analytically (`train_flops`): the forward
matrix products, 2 FLOPs per multiply-add, for each task sub-batch of B
examples of L tokens with P = (image / patch)^2 image tokens:
  encoder   2 P C D_e (patch embedding, C = patch^2 * 3)
            + depth_e * [8 P D_e^2 (q, k, v, out) + 4 P^2 D_e (scores, AV)
                         + 4 P D_e F_e (MLP)]
            + 2 P D_e D_d when D_e != D_d (image projection)
  decoder   depth_d * [8 L D^2 + 4 L^2 D (causal self-attention, the full
                       L x L product as computed, masked)
                       + 4 L D^2 + 4 P D^2 + 4 L P D (cross-attention:
                       q, out; k, v of the image tokens; scores, AV)
                       + 4 L D F (MLP)] + 2 L D V (head)
The backward pass costs twice the forward (input and weight gradients), but
the patch embedding needs only its weight gradient (pixels are not
differentiated): train = 3 * forward - patch embedding. Elementwise work
(LayerNorm, softmax, GELU, loss, optimizer) is not model FLOPs; XLA's cost
analysis of the compiled step counts it too, so `xla_over_analytic` is a
little above 1. MFU = analytic FLOPs / step time / (peak x devices), with the
dense bf16 peak of PEAK_TFLOPS; on CPU and unknown chips mfu=n/a. With
--remat the recomputed forward is not counted as model FLOPs (XLA's count
includes it, so xla_over_analytic rises, e.g. to ~1.4 with "full").
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# Dense bf16 peak TFLOP/s per chip, matched in order against the lower-cased
# device kind (H100 SXM; the PCIe card is lower).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h200", 989.0),
    ("h100", 989.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),  # v5e
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),
)


def peak_tflops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((p for k, p in PEAK_TFLOPS if k in kind), None)


def forward_flops(mcfg, batch: int, length: int) -> dict[str, int]:
  """Forward matmul FLOPs of one sub-batch, by part (see the docstring)."""
  p, de, dd = mcfg.num_patches, mcfg.enc_width, mcfg.dec_width
  fe, fd, n = mcfg.enc_mlp, mcfg.dec_mlp, length
  patch = 2 * p * mcfg.patch_size ** 2 * 3 * de
  enc = mcfg.enc_depth * (8 * p * de * de + 4 * p * p * de + 4 * p * de * fe)
  proj = 2 * p * de * dd if de != dd else 0
  dec = mcfg.dec_depth * (8 * n * dd * dd + 4 * n * n * dd + 4 * n * dd * dd +
                          4 * p * dd * dd + 4 * n * p * dd + 4 * n * dd * fd)
  head = 2 * n * dd * mcfg.vocab_size
  return {k: batch * v for k, v in
          dict(patch=patch, encoder=enc, proj=proj, decoder=dec,
               head=head).items()}


def train_flops(mcfg, sub_batches) -> int:
  """Model FLOPs of one training step over (batch, length) sub-batches."""
  total = 0
  for batch, length in sub_batches:
    f = forward_flops(mcfg, batch, length)
    total += 3 * sum(f.values()) - f["patch"]
  return total


def xla_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return (cost or {}).get("flops")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="auto",
                 help="a benchmarks/common.py SIZES name; auto: B on "
                 "accelerators, tiny on CPU")
  p.add_argument("--batch", type=int, default=0,
                 help="per-task batch (0: 256 on accelerators, 2 on CPU)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--remat", default="none",
                 help="config.model.remat (recomputation is not model FLOPs)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  import jax  # noqa: PLC0415

  from benchmarks import common  # noqa: PLC0415

  cpu = jax.devices()[0].platform == "cpu"
  size = args.size if args.size != "auto" else ("tiny" if cpu else "B")
  batch = args.batch or (2 if cpu else 256)
  c = common.bench_config(size, batch, args.dtype)
  c.model.remat = args.remat
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  mcfg = common.model_config(c)
  mesh, setup, init, update = common.train_step(c, mcfg)
  from r3jax import sharding  # noqa: PLC0415
  batch_np = common.random_batch(c, mcfg.vocab_size)
  data = jax.device_put(batch_np, sharding.batch_sharding(mesh))
  rep = common.Report()
  rep.hardware()
  with jax.set_mesh(mesh):
    compiled = update.lower(setup.abstract, data).compile()
    holder = [init()]

    def step():
      holder[0], m = compiled(holder[0], data)
      jax.block_until_ready(m)

    step()
    t = common.interleaved({"step": step}, args.rounds, args.steps)["step"]
  subs = [(t.batch_size, t.max_len) for t in c.tasks.values()]
  model = train_flops(mcfg, subs)
  xla = xla_flops(compiled)
  n = jax.device_count()
  achieved = model / t / 1e12
  peak = peak_tflops(jax.devices()[0].device_kind)
  params = sum(x.size for x in jax.tree.leaves(holder[0]["params"]))
  rep.put(size=size, dtype=args.dtype, remat=args.remat, params=params,
          batch=sum(b for b, _ in subs), tasks=len(subs))
  rep.put(model_flops_per_step=model,
          xla_flops_per_step=xla if xla is not None else "n/a",
          xla_over_analytic=(xla * n / model) if xla else "n/a")
  rep.put(step_ms=1e3 * t, examples_per_s=sum(b for b, _ in subs) / t,
          tflops_per_s=achieved)
  rep.put(peak_tflops=peak if peak else "n/a",
          mfu=achieved / (peak * n) if peak and not cpu else "n/a")
  rep.write(args.json)
  return rep.figures


if __name__ == "__main__":
  main()
