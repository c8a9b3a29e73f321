"""AdamW with linear warmup + cosine decay, global-norm clipping, decay mask."""

from __future__ import annotations

import re

import jax
import optax


def schedule(cfg, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(total_steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.end_lr_frac)


def decay_mask(params, no_decay: str):
  """True for parameters that get weight decay: matrices not matching `no_decay`."""
  pattern = re.compile(no_decay)

  def one(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return x.ndim >= 2 and not pattern.search(name)

  return jax.tree_util.tree_map_with_path(one, params)


def make(cfg, total_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay,
                  mask=lambda p: decay_mask(p, cfg.no_decay)),
  )
