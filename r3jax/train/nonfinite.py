"""Non-finite losses and gradients: the in-graph guard and the host-side check.

config.nonfinite says what a step with a non-finite loss, gradient norm or
update norm does:
  "stop"  the step runs unguarded; the loop raises FloatingPointError when it
          fetches the measurements, before anything from that step is saved.
  "skip"  the step keeps params, optimizer and aux state as they were (a
          select inside the jitted step, no host sync); the step counter and
          the data still advance. state["skipped"] counts such steps, so a
          resumed run counts on exactly; the measurements add `skipped` (this
          step: 0 or 1) and `skipped_total`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

MODES = ("stop", "skip")
# Measurements whose finiteness decides whether a step is kept.
GUARDED = ("loss", "grad_norm", "update_norm")


def guard(old: Mapping, new: Mapping, m: Mapping):
  """(state, measurements): `new` when the GUARDED measurements are finite,
  else `old` with the step counter advanced; both count the skip."""
  ok = jnp.all(jnp.stack([jnp.isfinite(m[k]) for k in GUARDED]))
  out = {k: v if k == "step" else jax.tree.map(
      lambda a, b: jnp.where(ok, a, b), v, old[k]) for k, v in new.items()}
  out["skipped"] = old["skipped"] + jnp.where(ok, 0, 1).astype(jnp.int32)
  m = dict(m, skipped=jnp.where(ok, 0.0, 1.0).astype(jnp.float32),
           skipped_total=out["skipped"].astype(jnp.float32))
  return out, m


def bad_keys(m: Mapping[str, float]) -> list[str]:
  """Non-finite measurements, the per-task losses first (they name the task
  that went bad), then the total loss and the gradient norm."""
  rank = {"loss": 1, "grad_norm": 2, "update_norm": 3}
  bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
  return sorted(bad, key=lambda k: (0 if k.startswith("loss/") else
                                    rank.get(k, 4), k))


def check(m: Mapping[str, float], step: int, last_checkpoint: int | None,
          skip: bool = False, where: str = "step") -> None:
  """Raises FloatingPointError naming the step and the non-finite measurements,
  unless the step was skipped (config.nonfinite="skip"), which is logged."""
  bad = bad_keys(m)
  if not bad:
    return
  shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8
                                else "")
  if skip and m.get("skipped"):
    logging.warning("%s %d skipped (state unchanged): non-finite %s", where,
                    step, shown)
    return
  raise FloatingPointError(
      f"non-finite {shown} at {where} {step}; the last checkpoint (step "
      f"{last_checkpoint}) is kept and nothing later is saved")
