"""The learning rates of optim.learning_rate and of optax's schedule for
tests/test_optim.py, computed in a process of their own with XLA's default
compiler settings, which runs use. Under the suite's FAST_COMPILE flags
XLA:CPU emits our multiply-adds (the warmup's frac * -peak + peak, the
cosine's) as a multiply, rounded, then an add, where optax's program of
constants keeps the fused multiply-add: warmup rates differ by up to 34 ulp,
decay rates by 1.

  python tests/optim_rates.py OUT.npz  (writes CASES' rates as int32 bits)
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from r3jax.train import optim

# (lr, warmup_steps, total_steps, end_lr_frac): the defaults, the study and
# RL settings, no warmup, lr 0, warmup longer than the run, odd values.
CASES = [(2e-3, 50, 1000, 0.01), (2.5e-4, 100, 1975, 0.01),
         (5e-5, 10, 200, 1.0), (5e-4, 100, 3000, 0.01), (1e-3, 0, 7, 0.1),
         (0.0, 3, 10, 0.5), (3e-4, 5, 3, 0.01), (1e-2, 1, 2, 0.0),
         (7.3e-4, 13, 977, 0.37), (1.25e-3, 1, 3353, 0.647)]


def config(lr, warmup, end_frac):
  return ml_collections.ConfigDict(dict(lr=lr, warmup_steps=warmup,
                                        end_lr_frac=end_frac))


def _bits(x):
  return np.asarray(x, np.float32).view(np.int32)


def rates(case) -> dict[str, np.ndarray]:
  """Every count's rate, vmapped (ours, ref), and about 25 counts, evenly
  spaced, jitted one count at a time as a step computes it (one,
  one_ref)."""
  lr, warmup, total, end_frac = case
  ref = optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(total, warmup + 1), lr * end_frac)
  s = optim.schedule(config(lr, warmup, end_frac), total)
  counts = jnp.arange(max(total, warmup + 1) + 3, dtype=jnp.int32)
  some = counts[::max(1, len(counts) // 25)]
  one, one_ref = jax.jit(optim.learning_rate), jax.jit(ref)
  return {
      "ours": _bits(jax.jit(jax.vmap(optim.learning_rate, (None, 0)))(
          s, counts)),
      "ref": _bits(jax.jit(jax.vmap(ref))(counts)),
      "one": np.stack([_bits(one(s, c)) for c in some]),
      "one_ref": np.stack([_bits(one_ref(c)) for c in some])}


if __name__ == "__main__":
  np.savez(sys.argv[1], **{f"{i}/{k}": v for i, case in enumerate(CASES)
                           for k, v in rates(case).items()})
