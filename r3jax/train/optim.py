"""AdamW with linear warmup + cosine decay, global-norm clipping, decay mask.

The learning rate is applied by the step (r3jax.train.step), not inside the
optimizer: `make` gives the update before the rate, and the step multiplies
it by `learning_rate(schedule, step)`, with the schedule's constants an
argument of the compiled step. Runs that differ only in length, warmup or
rate then compile one step and share it through the persistent compilation
cache. The optimizer state is that of optax.adamw with a schedule, and the
updates equal its updates bit for bit with XLA:CPU's default settings.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Schedule(NamedTuple):
  """optax.warmup_cosine_decay_schedule(0, peak, warmup, decay_steps, end) as
  arrays: linear warmup from 0 to `peak` over `warmup` steps, then cosine
  decay to peak * alpha over `decay` more steps. The constants are those XLA
  folds optax's schedule into when they are compile-time constants (x / c
  becomes x * (1 / c); constant factors merge), so that the rates are equal
  bit for bit with XLA:CPU's default settings (tests/test_optim.py)."""
  warmup: np.ndarray          # int32
  inv_warmup: np.ndarray      # float32: 1 / warmup (0 when warmup is 0)
  decay: np.ndarray           # float32: decay_steps - warmup
  pi_over_decay: np.ndarray   # float32: pi * (1 / decay)
  half_span: np.ndarray       # float32: 0.5 * (1 - alpha), alpha = end / peak
  alpha: np.ndarray           # float32 (0 when peak is 0)
  peak: np.ndarray            # float32


def schedule(cfg, total_steps: int) -> Schedule:
  if cfg.warmup_steps < 0:
    raise ValueError(f"optim.warmup_steps must be >= 0, got {cfg.warmup_steps}")
  f32 = np.float32
  decay = f32(max(total_steps, cfg.warmup_steps + 1) - cfg.warmup_steps)
  alpha = 0.0 if cfg.lr == 0.0 else cfg.lr * cfg.end_lr_frac / cfg.lr
  return Schedule(
      np.int32(cfg.warmup_steps),
      f32(1) / f32(cfg.warmup_steps) if cfg.warmup_steps else f32(0),
      decay, f32(np.pi) * (f32(1) / decay), f32(0.5) * f32(1 - alpha),
      f32(alpha), f32(cfg.lr))


def learning_rate(s: Schedule, count) -> jax.Array:
  """The rate at optimizer step `count` (int32)."""
  count = jnp.asarray(count, jnp.int32)
  # optax.linear_schedule from 0 to peak: (0 - peak) * frac + peak.
  frac = 1 - jnp.clip(count, 0, s.warmup) * s.inv_warmup
  warm = frac * -s.peak + s.peak
  # optax.cosine_decay_schedule after the warmup.
  t = jnp.minimum(count - s.warmup, s.decay)
  decayed = ((jnp.cos(t * s.pi_over_decay) + 1) * s.half_span + s.alpha
             ) * s.peak
  return jnp.where(count < s.warmup, warm, decayed)


def apply(s: Schedule, count, updates):
  """`updates` from `make` scaled by the rate at `count`."""
  lr = learning_rate(s, count)
  return jax.tree.map(lambda u: lr.astype(u.dtype) * u, updates)


def decay_mask(params, no_decay: str):
  """True for parameters that get weight decay: matrices not matching `no_decay`."""
  pattern = re.compile(no_decay)

  def one(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return x.ndim >= 2 and not pattern.search(name)

  return jax.tree_util.tree_map_with_path(one, params)


def make(cfg) -> optax.GradientTransformation:
  """optax.adamw's chain at a rate of 1 (its schedule state kept): scale the
  result with `apply`."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(lambda count: 1.0, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay,
                  mask=lambda p: decay_mask(p, cfg.no_decay)),
  )
