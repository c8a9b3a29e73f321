"""Per-task losses, each a mean over that task's own target tokens.

Never a token mean over the mixed batch: that would weight tasks by answer
length (a caption has ~30 target tokens, a VQA answer 2).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from r3jax.r3 import consistency, grounded


def token_sums(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
               mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masked sums of cross-entropy and of correct next tokens, and the token count."""
  xent_BxL = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL)
  correct_BxL = (logits_BxLxV.argmax(-1) == targets_BxL).astype(jnp.float32)
  return ((xent_BxL * mask_BxL).sum(), (correct_BxL * mask_BxL).sum(),
          mask_BxL.sum().astype(jnp.float32))


def sub_batch_sums(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """token_sums of a task sub-batch, plus the R3 consistency term when the
  sub-batch carries one (r3jax.r3.consistency; normalised like the tokens),
  or the grounded consistency term (r3jax.r3.grounded; its slots count as
  the tokens, a slot agreeing with the VQA answer as a correct one)."""
  loss, correct, n = token_sums(logits_BxLxV, b["targets"], b["loss_mask"])
  if "cons_src" in b:
    loss = loss + consistency.loss_sum(logits_BxLxV, b)
  if "gnd_at" in b:
    kl, agree, slots = grounded.sums(logits_BxLxV, b)
    loss, correct, n = loss + kl, correct + agree, n + slots
  return loss, correct, n


def token_xent(logits_BxLxV: jax.Array, b: Mapping[str, jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
  """A sub-batch's loss (mean over its target tokens) and token accuracy."""
  loss, correct, n = sub_batch_sums(logits_BxLxV, b)
  n = jnp.maximum(n, 1.0)
  return loss / n, correct / n


def task_losses(model, batch: Mapping[str, Mapping[str, jax.Array]]
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """{task: loss} and {task: token accuracy}; one forward per task sub-batch."""
  losses, accs = {}, {}
  for name, b in batch.items():
    logits = model(b["image"], b["tokens"])
    losses[name], accs[name] = token_xent(logits, b)
  return losses, accs


def weighted_total(losses: Mapping[str, jax.Array],
                   weights: Mapping[str, float]) -> jax.Array:
  return sum(weights[name] * loss for name, loss in losses.items())
